"""`cifar-mlflow sweep`'s options: every train option, given once for the whole sweep or repeated
as an axis of the grid, plus where and how the sweep runs. The work is in job.py, imported when
the command runs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import click
from click.core import ParameterSource

from ..core.config import TrainConfig
from ..options import GROUP_ID, RESOURCE_SHARE
from ..train.command import CONFIG_OPTIONS
from .grid import SWEEP_WIDE, Grid, build_base, load_grid_file, resolve_seeds

DEFAULT_OUTPUT_ROOT = "outputs/sweeps"
TRAIN_OPTIONS = {o.name: o for o in CONFIG_OPTIONS}  # what the grid file and the sweep accept


def _sweep_option(option: click.Option) -> click.Option:
    """A train option, repeatable (its values are an axis) unless it is one per sweep."""
    repeatable = option.name not in SWEEP_WIDE
    help_text = option.help or ""
    if repeatable:
        help_text += (
            f"{'; ' if help_text else ''}default {option.default}; repeat to sweep over values"
        )
    # An option whose value may be left out (`--compile` alone) keeps that in the sweep.
    optional_value = {} if option.flag_value is None else {"flag_value": option.flag_value}
    return click.Option(
        option.opts, type=option.type, multiple=repeatable, help=help_text,
        default=None if repeatable else option.default, show_default=not repeatable,
        **optional_value,
    )  # fmt: skip


def requested_grid(
    ctx: click.Context, options: Mapping[str, object], grid_file: str | None, seeds: int
) -> tuple[Grid, TrainConfig, tuple[int, ...]]:
    """The grid, the base config and the seeds the command line asks for. Options given once set
    the base (over the grid file's); options given several times are the axes of a product grid
    that replaces the default study; `--seeds N` gives N seeds from the base seed on."""
    once = {k: v[0] for k, v in options.items() if isinstance(v, tuple) and len(v) == 1}
    repeated = {k: v for k, v in options.items() if isinstance(v, tuple) and len(v) > 1}
    once.update({k: v for k, v in options.items() if k in SWEEP_WIDE})
    if options["no_system_metrics"]:
        once["system_metrics"] = False
    seeds_given = ctx.get_parameter_source("seeds") is ParameterSource.COMMANDLINE
    if grid_file:
        if repeated:
            raise click.UsageError(
                f"--{next(iter(repeated)).replace('_', '-')} is repeated and --grid is given: "
                "put the values to sweep in the grid file, or leave out --grid"
            )
        grid = load_grid_file(grid_file, TRAIN_OPTIONS)
    else:
        grid = Grid(axes=(repeated,), source="command line") if repeated else Grid()
    if seeds_given or grid.seeds is None:
        grid = dataclasses.replace(grid, seeds=seeds)
    if "seed" in repeated and seeds_given and seeds > 1:
        raise click.UsageError("give the seeds once: --seed repeated or --seeds N, not both")
    base = build_base({**grid.base, **once})
    return grid, base, resolve_seeds(grid.seeds, base.seed)


def _tuned_grid(ctx: click.Context, tune_id: str, grid_file: str | None,
                options: Mapping[str, object], base: TrainConfig) -> Grid:  # fmt: skip
    from .plan import tuned_grid  # reads the tune from the tracking server

    if grid_file or any(isinstance(v, tuple) and len(v) > 1 for v in options.values()):
        raise click.UsageError(
            "--tuned trains the tune's configurations: leave out --grid and repeated options"
        )
    given = {n for n in options if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE}
    return tuned_grid(tune_id, given, base)


def _check_runs_per_gpu(executor: str, parallel, runs_per_gpu, gpus_per_trial) -> None:
    """--runs-per-gpu says how the processes share the GPUs; so do the options it replaces."""
    if runs_per_gpu is None:
        return
    if executor == "local" and parallel is not None:
        raise click.UsageError(
            "give --parallel N (N at once, round robin over the GPUs) or --runs-per-gpu K "
            "(K on each GPU), not both"
        )
    if gpus_per_trial is not None:
        raise click.UsageError(
            "give --gpus-per-trial G or --runs-per-gpu K (1/K of a GPU per trial), not both"
        )


@click.command(params=[
    *(_sweep_option(o) for o in CONFIG_OPTIONS),
    click.Option(["--no-system-metrics"], is_flag=True, help="same as --system-metrics false"),
])  # fmt: skip
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False), default=None,
              help="YAML grid file: base options, lists of values per option (see grids/study.yaml); "
                   "default: the study (4 activations, 3 optimizers, 2 models: 7 configurations)")  # fmt: skip
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="train every configuration with N seeds, from --seed on")  # fmt: skip
@click.option("--sweep-id", type=GROUP_ID, default=None,
              help="resume this sweep: configurations it finished are skipped  [default: a new id]")  # fmt: skip
@click.option("--dry-run", type=click.BOOL, is_flag=False, flag_value="true", default=False,
              help="print what would run and what is skipped, then exit (`--dry-run` alone: true)")  # fmt: skip
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: processes on this machine; ray: Ray Tune trials (pip install -e \".[ray]\")")  # fmt: skip
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="configurations at once (local: one GPU each, round robin)  [default: local "
                   "--runs-per-gpu x GPUs, ray: as the cluster's resources allow]")  # fmt: skip
@click.option("--runs-per-gpu", type=click.IntRange(min=1), default=None, metavar="K",
              help="trainings sharing each GPU at once (local: K x GPUs processes, each pinned "
                   "by CUDA_VISIBLE_DEVICES; without GPUs, K at once on the CPU; ray: num_gpus "
                   "1/K per trial)  [default: 1, until a GPU measurement says otherwise: "
                   "docs/benchmarks.md]")  # fmt: skip
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="a running Ray cluster (host:port, ray://host:10001, auto)  [default: start a local Ray]")  # fmt: skip
@click.option("--cpus-per-trial", type=RESOURCE_SHARE, default=1.0, show_default=True)
@click.option("--gpus-per-trial", type=RESOURCE_SHARE, default=None,
              help="[default: 1 where the Ray cluster has GPUs and --device is not cpu, else 0]")  # fmt: skip
@click.option("--tuned", metavar="TUNE_ID", default=None,
              help="train the configurations of this `cifar-mlflow tune` at their tuned lr (and "
                   "weight decay) for the full --epochs over --seeds: the fair comparison")  # fmt: skip
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help=f"where the compare report is written  [default: {DEFAULT_OUTPUT_ROOT}/SWEEP_ID]")  # fmt: skip
@click.pass_context
def sweep(ctx, grid_file, seeds, sweep_id, dry_run, executor, parallel, runs_per_gpu, ray_address,
          cpus_per_trial, gpus_per_trial, tuned, output_dir, **options) -> None:  # fmt: skip
    """Train a whole grid of configurations as one tracked, resumable sweep."""
    from .job import Execution, run_sweep

    _check_runs_per_gpu(executor, parallel, runs_per_gpu, gpus_per_trial)
    grid, base, seed_list = requested_grid(ctx, options, grid_file, seeds)
    if tuned:
        grid = _tuned_grid(ctx, tuned, grid_file, options, base)
    execution = Execution(executor, parallel, ray_address, cpus_per_trial, gpus_per_trial,
                          runs_per_gpu or 1)  # fmt: skip
    sweep_id = sweep_id or time.strftime("%Y%m%d-%H%M%S")
    output_dir = output_dir or f"{DEFAULT_OUTPUT_ROOT}/{sweep_id}"
    run_sweep(grid, base, seed_list, sweep_id, dry_run, execution, output_dir)
