"""cifar-mlflow: run, track and compare CNN ablation studies on CIFAR-10 with MLflow."""

__version__ = "0.1.0"
