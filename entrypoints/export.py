"""MLproject entry point `export`: hand the arguments to `cifar-mlflow export`.

Run as `python -m entrypoints.export` from the project directory, like entrypoints/train.py.
"""

import sys

from cifar_mlflow.cli import cli

if __name__ == "__main__":
    cli(["export", *sys.argv[1:]], prog_name="cifar-mlflow")
