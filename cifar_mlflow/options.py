"""click parameter types the commands share. Nothing heavier than click is imported here, so
every command's options (and `--help`) load without torch or MLflow."""

from __future__ import annotations

from collections.abc import Iterable

import click

POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)


class HeldOut(click.ParamType):
    """A number of images (an integer >= 1) or a fraction of them (0 < f < 1); 0: none."""

    name = "N|FRACTION"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (number == 0 or 0 < number < 1 or (number >= 1 and number.is_integer())):
            self.fail(f"{value} is neither 0, a fraction in (0, 1) nor a whole count >= 1",
                      param, ctx)  # fmt: skip
        return int(number) if number >= 1 else number


HELD_OUT = HeldOut()


def choice(names: Iterable[str]) -> click.Choice:
    """One of `names`, in any case (`--model ResNet18` is resnet18)."""
    return click.Choice(list(names), case_sensitive=False)
