"""`cifar-mlflow compare`: the finished training runs of an experiment as the study's charts,
table and report, logged to a compare run."""
