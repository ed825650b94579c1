"""MLproject entry point `tune`: `cifar-mlflow tune` as `mlflow run` calls it."""

from cifar_mlflow.cli import mlproject_entry_point

if __name__ == "__main__":
    mlproject_entry_point("tune")
