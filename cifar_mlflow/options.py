"""click parameter types the commands share. Nothing heavier than click is imported here, so
every command's options (and `--help`) load without torch or MLflow."""

from __future__ import annotations

from collections.abc import Iterable

import click

POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)


def choice(names: Iterable[str]) -> click.Choice:
    """One of `names`, in any case (`--model ResNet18` is resnet18)."""
    return click.Choice(list(names), case_sensitive=False)
