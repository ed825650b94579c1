"""MLproject entry point `compare`: hand the arguments to `cifar-mlflow compare`.

Run as `python -m entrypoints.compare` from the project directory, so `cifar_mlflow` imports from
there even where the project is not pip-installed (conda environments built by `mlflow run`).
The run `mlflow run -e compare` creates (MLFLOW_RUN_ID) becomes the compare run.
"""

import sys

from cifar_mlflow.cli import cli

if __name__ == "__main__":
    cli(["compare", *sys.argv[1:]], prog_name="cifar-mlflow")
