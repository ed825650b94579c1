"""MLproject entry points `main` and `train`: hand the arguments to `cifar-mlflow train`.

Run as `python -m entrypoints.train` from the project directory, so `cifar_mlflow` imports from
there even where the project is not pip-installed (conda environments built by `mlflow run`).
"""

import sys

from cifar_mlflow.cli import cli

if __name__ == "__main__":
    cli(["train", *sys.argv[1:]], prog_name="cifar-mlflow")
