"""`cifar-mlflow sweep`: a whole study in one command, resumable, here or on a Ray cluster; each
configuration is a `cifar-mlflow train` process, and the compare report goes to the sweep's
parent run."""
