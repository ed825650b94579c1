"""`cifar-mlflow train`: one model trained (core) and recorded in MLflow (tracking)."""
