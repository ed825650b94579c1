"""`cifar-mlflow tune`'s options: the sweep's grid options (once for every configuration, or
repeated as an axis; --lr is what is searched), the search, and where the trials run. The work
is in job.py, imported when the command runs."""

from __future__ import annotations

import dataclasses
import re
import time

import click

from ..core.config import DEFAULT_EXPERIMENT
from ..options import EXPERIMENT_NAME, FLOAT32_MAX, GROUP_ID, POSITIVE_INT, RESOURCE_SHARE
from ..sweep.command import TRAIN_OPTIONS, requested_grid
from ..sweep.command import sweep as sweep_command
from ..sweep.grid import Grid
from .ranges import DEFAULT_LR_RANGES, SEARCHED, STUDY_OPTIMIZERS, WARMUP_HELP

OPTIMIZER_STUDY = Grid(axes=({"optimizer": STUDY_OPTIMIZERS},), source="optimizer study")
ONE_CONFIGURATION = Grid(axes=({},), source="command line")  # the base config alone
DEFAULT_TRIAL_EPOCHS = 10
DEFAULT_STORAGE_ROOT = "outputs/tunes"
# Trials are short runs at every setting tried: filed apart from the study's runs, compare's
# default experiment never mixes them in.
TUNE_EXPERIMENT = f"{DEFAULT_EXPERIMENT}-tune"
# The sweep's train options (and --no-system-metrics), but --epochs, the trials' budget here.
GRID_OPTIONS = [p for p in sweep_command.params
                if p.name in {*TRAIN_OPTIONS, "no_system_metrics"} - {*SEARCHED, "epochs", "experiment"}]  # fmt: skip


class LogRange(click.ParamType):
    """`LOW,HIGH` (or `LOW HIGH` as one argument, as `mlflow run -P` passes it):
    0 < LOW < HIGH <= `maximum`."""

    name = "LOW,HIGH"

    def __init__(self, maximum: float):
        self.maximum = maximum

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p for p in re.split(r"[,\s]+", str(value).strip()) if p]
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r}: give two numbers, LOW,HIGH (e.g. 1e-4,0.1)", param, ctx)
        if not 0 < low < high:
            self.fail(f"{value!r} is an empty range: give 0 < LOW < HIGH", param, ctx)
        if high > self.maximum:
            self.fail(f"{value!r} goes beyond {self.maximum:g}, the largest value that trains",
                      param, ctx)  # fmt: skip
        return low, high


def _refuse_searched(ctx, param, value) -> None:
    if value is not None:
        raise click.UsageError(
            f"a tune searches the learning rate: give --lr-range LOW,HIGH, not --{param.name}"
        )


RANGES_HELP = ", ".join(f"{o} {lo:g}..{hi:g}" for o, (lo, hi) in DEFAULT_LR_RANGES.items())


@click.command(params=[
    *GRID_OPTIONS,
    click.Option(["--epochs"], type=POSITIVE_INT, multiple=True,
                 help=f"each trial's budget (the short one)  [default: {DEFAULT_TRIAL_EPOCHS}, or the "
                      "grid file's]"),
    click.Option(["--lr"], hidden=True, expose_value=False, callback=_refuse_searched),
    click.Option(["--experiment"], type=EXPERIMENT_NAME, default=TUNE_EXPERIMENT, show_default=True,
                 help="MLflow experiment of the tune's runs (ignored under `mlflow run`, which "
                      "chooses it)"),
])  # fmt: skip
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False), default=None,
              help="YAML grid file, as the sweep's (its lr values are ignored: lr is searched); "
                   "default: the optimizer study (sgd, momentum, adam with relu on resnet18)")  # fmt: skip
@click.option("--trials", type=POSITIVE_INT, default=10, show_default=True,
              help="trials per configuration: complete, pruned or diverged (one a kill interrupted "
                   "is run again)")  # fmt: skip
@click.option("--lr-range", type=LogRange(maximum=FLOAT32_MAX), default=None,
              help=f"search the learning rate log-uniformly in LOW,HIGH for every configuration  "
                   f"[default per optimizer: {RANGES_HELP}]")  # fmt: skip
@click.option("--weight-decay-range", type=LogRange(maximum=1.0), default=None,
              help="also search the weight decay log-uniformly in LOW,HIGH  [default: not searched, "
                   "--weight-decay]")  # fmt: skip
@click.option("--prune-after", type=click.IntRange(min=0), default=3, show_default=True,
              help="once N trials of a configuration completed, stop a trial at an epoch where its "
                   f"val acc is below their median there; {WARMUP_HELP}")  # fmt: skip
@click.option("--tune-id", type=GROUP_ID, default=None,
              help="resume this tune: trials it finished stay, none is added twice  [default: a "
                   "new id]")  # fmt: skip
@click.option("--storage", type=click.Path(dir_okay=False), default=None,
              help="the tune's Optuna studies: a SQLite file, or a database URL (postgresql://...)"
                   f"  [default: {DEFAULT_STORAGE_ROOT}/TUNE_ID.db]")  # fmt: skip
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: trials one after another in this process; ray: Ray Tune trials with "
                   "Ray's OptunaSearch and ASHA, its grace period the same warm-up (pip install "
                   "-e \".[ray,tune]\")")  # fmt: skip
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=None,
    help="ray: trials at once  [default: as the cluster's resources allow]",
)
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="a running Ray cluster (host:port, ray://host:10001, auto)  [default: start a "
                   "local Ray]")  # fmt: skip
@click.option("--cpus-per-trial", type=RESOURCE_SHARE, default=1.0, show_default=True)
@click.option("--gpus-per-trial", type=RESOURCE_SHARE, default=None,
              help="[default: 1 where the Ray cluster has GPUs and --device is not cpu, else 0]")  # fmt: skip
@click.pass_context
def tune(ctx, grid_file, trials, lr_range, weight_decay_range, prune_after, tune_id, storage,
         executor, parallel, ray_address, cpus_per_trial, gpus_per_trial, **options) -> None:  # fmt: skip
    """Tune each configuration's learning rate on the validation split (Optuna), tracked and
    resumable; then `cifar-mlflow sweep --tuned TUNE_ID --seeds N` trains the finals."""
    from ..sweep.job import Execution
    from .job import TuneSettings, run_tune

    if not options["epochs"] and not grid_file:
        options["epochs"] = (DEFAULT_TRIAL_EPOCHS,)
    repeated = any(isinstance(v, tuple) and len(v) > 1 for v in options.values())
    grid, base, _ = requested_grid(ctx, options, grid_file, 1)
    if not grid_file and not repeated:  # the optimizer study, or the one optimizer given
        study = OPTIMIZER_STUDY if not options["optimizer"] else ONE_CONFIGURATION
        grid = dataclasses.replace(study, seeds=grid.seeds)
    tune_id = tune_id or time.strftime("%Y%m%d-%H%M%S")
    settings = TuneSettings(trials, lr_range, weight_decay_range, prune_after)
    execution = Execution(executor=executor, parallel=parallel, ray_address=ray_address,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)  # fmt: skip
    storage = storage or f"{DEFAULT_STORAGE_ROOT}/{tune_id}.db"
    run_tune(grid, base, tune_id, settings, execution, storage)
