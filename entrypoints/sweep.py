"""MLproject entry point `sweep`: hand the arguments to `cifar-mlflow sweep`.

MLflow needs a value for every parameter of an entry point, so the `sweep` parameters default to
"" and an option given as "" is left out here: it keeps its meaning of "not given" (the grid
file's base, or the train default), instead of overriding the grid file with a default.
"""

import sys

from cifar_mlflow.cli import cli


def given(argv: list[str]) -> list[str]:
    """argv without the `--option ""` pairs; a bare `--dry-run true/false` becomes the flag."""
    kept = []
    for option, value in zip(argv[::2], argv[1::2]):
        if value == "":
            continue
        if option == "--dry-run":
            kept += [option] if value.lower() == "true" else []
        else:
            kept += [option, value]
    return kept


if __name__ == "__main__":
    cli(["sweep", *given(sys.argv[1:])], prog_name="cifar-mlflow")
