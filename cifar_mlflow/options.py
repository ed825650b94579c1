"""click parameter types the commands share: each says its rule, and `--help` shows it. Nothing
heavier than click and core.config is imported here, so every command's options (and `--help`)
load without torch or MLflow."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import click

from .core.config import CLASSES, checkpoint_interval
from .core.errors import UserError

# MLflow's limit on an experiment's name (measured on MLflow 3.17: its server refuses 501
# characters and "" with INVALID_PARAMETER_VALUE; tests/test_options.py checks against a server).
EXPERIMENT_NAME_LIMIT = 500


class FiniteRange(click.FloatRange):
    """A finite number in a range. click's FloatRange alone takes "nan" (it compares false with
    every bound) and "inf" where a side is unbounded: a run would train on them."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class PerClassLimit(click.ParamType):
    """0 (every image) or a number of images that keeps at least one of each class."""

    name = "N"

    def convert(self, value, param, ctx):
        number = click.INT.convert(value, param, ctx)
        if number < 0 or 0 < number < len(CLASSES):
            self.fail(f"{number} is neither 0 (all) nor at least {len(CLASSES)} (one image per "
                      "class)", param, ctx)  # fmt: skip
        return number


class ExperimentName(click.ParamType):
    """A name MLflow accepts for an experiment: not blank, at most EXPERIMENT_NAME_LIMIT long."""

    name = "NAME"

    def convert(self, value, param, ctx):
        if not value.strip():
            self.fail("an experiment needs a name that is not blank", param, ctx)
        if len(value) > EXPERIMENT_NAME_LIMIT:
            self.fail(f"{len(value)} characters: MLflow takes at most {EXPERIMENT_NAME_LIMIT}",
                      param, ctx)  # fmt: skip
        return value


POSITIVE_INT = click.IntRange(min=1)
SEED = click.IntRange(0, 2**32 - 1)  # numpy's seed is a 32-bit unsigned integer
# A learning rate is bounded only by what torch can step with: it multiplies in float32, and a
# rate above float32's largest number raises "value cannot be converted to type float without
# overflow" at the first step. Below that, one that diverges ends the run FAILED after its epoch
# (core.engine checks the loss, the weights and the outputs).
FLOAT32_MAX = 3.4028234663852886e38
LEARNING_RATE = FiniteRange(min=0, min_open=True, max=FLOAT32_MAX)
FRACTION = FiniteRange(0, 1, max_open=True)  # momentum, weight decay: 1 or more cannot converge
RESOURCE_SHARE = FiniteRange(min=0)  # CPUs or GPUs a Ray trial asks for: fractions allowed
PER_CLASS_LIMIT = PerClassLimit()
EXPERIMENT_NAME = ExperimentName()


class HeldOut(click.ParamType):
    """A number of images (an integer >= 1) or a fraction of them (0 < f < 1); 0: none."""

    name = "N|FRACTION"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not (number == 0 or 0 < number < 1 or (number >= 1 and number.is_integer())):
            self.fail(f"{value} is neither 0, a fraction in (0, 1) nor a whole count >= 1",
                      param, ctx)  # fmt: skip
        return int(number) if number >= 1 else number


HELD_OUT = HeldOut()


class GroupId(click.ParamType):
    """A sweep's or a tune's id: it names files and goes into MLflow search filters, so letters,
    digits, '.', '_' and '-' only, starting with a letter or digit, at most 64."""

    name = "ID"
    PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

    def convert(self, value, param, ctx):
        if not self.PATTERN.match(value):
            self.fail(f"{value!r}: use letters, digits, '.', '_' and '-' (at most 64)", param, ctx)
        return value


GROUP_ID = GroupId()


class CheckpointEvery(click.ParamType):
    """A number of epochs (>= 1) or a time with its unit (30s, 5m, 1h)."""

    name = "EPOCHS|TIME"

    def convert(self, value, param, ctx):
        try:
            checkpoint_interval(value)
        except UserError:
            self.fail(f"{value!r} is neither a number of epochs >= 1 nor a time with its unit "
                      "(30s, 5m, 1h)", param, ctx)  # fmt: skip
        return str(value).strip().lower()


CHECKPOINT_EVERY = CheckpointEvery()


def choice(names: Iterable[str]) -> click.Choice:
    """One of `names`, in any case (`--model ResNet18` is resnet18)."""
    return click.Choice(list(names), case_sensitive=False)
