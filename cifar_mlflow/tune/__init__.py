"""`cifar-mlflow tune`: each configuration's learning rate (and weight decay) searched on the
validation split with Optuna, here or as Ray Tune trials; `sweep --tuned` trains the finals."""
