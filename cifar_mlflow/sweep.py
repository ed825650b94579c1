"""`cifar-mlflow sweep`: a whole study in one command, resumable, here or on a Ray cluster.

The grid (grid.py) is expanded into TrainConfigs; configurations an earlier invocation of the same
sweep id finished are skipped, the others are trained, each in its own process (sweep_executors.py)
logging into a child run that the sweep created under its parent run (sweep_runs.py). At the end
the compare report is logged to the parent run, which `compare --sweep ID` would also produce.

A child that did not finish is rerun in the same run: `train` continues it from its last
checkpoint (MLFLOW_RUN_ID), so a sweep stopped after epoch 30 of 40 loses at most one epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from click.core import ParameterSource
from mlflow.tracking import MlflowClient

from . import tracking
from .cli import train as train_command
from .config import TrainConfig
from .errors import UserError
from .grid import SWEEP_WIDE, Grid, build_base, expand, load_grid_file, resolve_seeds
from .sweep_executors import (
    Launch,
    Outcome,
    check_ray_address,
    ray_session,
    run_local,
    run_ray,
    trial_gpus,
    visible_gpus,
)
from .sweep_progress import Board, Row, summary_table
from .sweep_runs import (
    Planned,
    child_args,
    earlier_runs,
    end_parent,
    make_plan,
    open_parent,
    plan_lines,
    schedule,
    sweep_experiment,
)

SWEEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_OUTPUT_ROOT = "outputs/sweeps"


@dataclass(frozen=True)
class Execution:
    """Where and how the configurations train."""

    executor: str = "local"
    parallel: int | None = None  # local: 1; ray: as many as the cluster's resources allow
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: one where the cluster has GPUs


# ---- the command line: every train option, once for the whole sweep or repeated as an axis ----


def train_options() -> dict[str, click.Option]:
    """The train command's value options by name: the grid file and the sweep accept these."""
    return {
        p.name: p
        for p in train_command.params
        if isinstance(p, click.Option) and not p.is_flag and p.name != "resume"
    }


def _sweep_option(option: click.Option) -> click.Option:
    repeatable = option.name not in SWEEP_WIDE
    help_text = option.help or ""
    if repeatable:
        help_text += (
            f"{'; ' if help_text else ''}default {option.default}; repeat to sweep over values"
        )
    # An option whose value may be left out (`--compile` alone) keeps that in the sweep.
    optional_value = {"flag_value": option.flag_value} if option._flag_needs_value else {}
    return click.Option(
        option.opts, type=option.type, multiple=repeatable, help=help_text,
        default=None if repeatable else option.default, show_default=not repeatable,
        **optional_value,
    )  # fmt: skip


def _with_train_options(command: click.Command) -> click.Command:
    command.params[:0] = [_sweep_option(o) for o in train_options().values()] + [
        click.Option(["--no-system-metrics"], is_flag=True, help="same as --system-metrics false")
    ]
    return command


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
                f"--{_dashed(next(iter(repeated)))} is repeated and --grid is given: put the "
                "values to sweep in the grid file, or leave out --grid"
            )
        grid = load_grid_file(grid_file, train_options())
    else:
        grid = Grid(axes=(repeated,), source="command line") if repeated else Grid()
    if seeds_given or grid.seeds is None:
        grid = dataclasses.replace(grid, seeds=seeds)
    if "seed" in repeated and seeds_given and seeds > 1:
        raise click.UsageError("give the seeds once: --seed repeated or --seeds N, not both")
    base = build_base({**grid.base, **once})
    return grid, base, resolve_seeds(grid.seeds, base.seed)


# ---- running it ----


def run_sweep(grid: Grid, base: TrainConfig, seeds: Sequence[int], sweep_id: str, dry_run: bool,
              execution: Execution, output_dir: str | None) -> None:  # fmt: skip
    uri = tracking.connect()
    on_ray = execution.executor == "ray"
    if on_ray:
        _check_ray(execution, uri)
    client = MlflowClient()
    experiment = sweep_experiment(client, base.experiment, create=not dry_run)
    name = experiment.name if experiment else base.experiment
    configs = expand(dataclasses.replace(base, experiment=name), grid.axes, seeds)
    parent, children = earlier_runs(client, experiment, sweep_id)
    plan = make_plan(configs, children)
    todo = [p for p in plan if p.action != "skip"]
    click.echo(
        f"sweep {sweep_id}: {len(plan)} configurations ({len(todo)} to train) in experiment "
        f"{name!r} on {uri}\n  grid ({grid.source}): {grid.describe_axes()}; seeds "
        f"{', '.join(map(str, seeds))}"
    )
    click.echo("\n".join(plan_lines(plan)))
    if dry_run:
        click.echo("dry run: nothing was started")
        return
    if not todo and parent is not None and parent.info.status == "FINISHED":
        click.echo(
            f"nothing to train: every configuration has finished (parent run {parent.info.run_id})"
        )
        return
    params = {"sweep.grid": grid.describe_axes()[:6000], "sweep.grid_source": grid.source,
              "sweep.seeds": " ".join(map(str, seeds)), "sweep.configurations": str(len(plan)),
              **{f"base.{k}": str(v) for k, v in base.as_params().items()}}  # fmt: skip
    devices = {p.config.device for p in todo}
    with ray_session(execution.ray_address) if on_ray else contextlib.nullcontext():
        if on_ray:
            gpus = trial_gpus(execution.gpus_per_trial, devices)
        parent_id = open_parent(client, experiment, parent, sweep_id, params)
        try:
            run_ids = schedule(client, experiment, parent_id, sweep_id, todo)
            launches = _launches(todo, run_ids, uri, experiment)
            board = Board([p.config.run_name for p in todo])
            board.show()
            if on_ray:
                found = run_ray(launches, board, execution.cpus_per_trial, gpus,
                                execution.parallel, f"sweep-{sweep_id}")  # fmt: skip
            else:
                gpu_ids = visible_gpus() if devices - {"cpu"} else []
                found = run_local(launches, board, execution.parallel or 1, gpu_ids)
        except BaseException as e:
            end_parent(client, parent_id, e)
            raise
    rows = _rows(plan, {todo[i].key: outcome for i, outcome in found.items()})
    click.echo(summary_table(rows))
    if any(r.status == "FINISHED" for r in rows):
        _compare_into(parent_id, name, sweep_id, output_dir or f"{DEFAULT_OUTPUT_ROOT}/{sweep_id}")
    _close_parent(client, parent_id, sweep_id, rows)


def _launches(
    todo: Sequence[Planned], run_ids: Sequence[str], uri: str, experiment
) -> list[Launch]:
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment.experiment_id,
           "MLFLOW_EXPERIMENT_NAME": experiment.name}  # fmt: skip
    return [
        Launch(
            index=i,
            name=p.config.run_name,
            run_id=run_id,
            args=child_args(p.config),
            env={**env, "MLFLOW_RUN_ID": run_id},
            cwd=os.getcwd(),
        )  # fmt: skip
        for i, (p, run_id) in enumerate(zip(todo, run_ids))
    ]


def _close_parent(client: MlflowClient, parent_id: str, sweep_id: str, rows: Sequence[Row]) -> None:
    """FINISHED when every configuration is; else FAILED, and the sweep exits non-zero."""
    failed = [r for r in rows if r.status != "FINISHED"]
    if failed:
        reason = f"{len(failed)} of {len(rows)} configurations did not finish"
        client.set_tag(parent_id, tracking.FAILURE_TAG, reason)
        client.set_terminated(parent_id, "FAILED")
        raise UserError(f"{reason}: run the same command with --sweep-id {sweep_id} to retry them")
    if tracking.FAILURE_TAG in client.get_run(parent_id).data.tags:
        client.delete_tag(parent_id, tracking.FAILURE_TAG)  # an earlier invocation's
    client.set_terminated(parent_id, "FINISHED")
    click.echo(f"sweep {sweep_id} finished: parent run {parent_id}")


def _check_ray(execution: Execution, uri: str) -> None:
    if execution.ray_address and not uri.startswith(("http://", "https://")):
        raise UserError(
            f"trials on a Ray cluster cannot reach {uri}: set MLFLOW_TRACKING_URI to a tracking "
            "server (http://...)"
        )
    check_ray_address(execution.ray_address)


def _rows(plan: Sequence[Planned], outcomes: Mapping[str, Outcome]) -> list[Row]:
    rows = []
    for p in plan:
        if p.action == "skip":
            run = p.previous
            rows.append(Row(p.config.run_name, "FINISHED", run.data.metrics.get("best_test_acc"),
                            None, run.info.run_id, earlier=True))  # fmt: skip
        else:
            o = outcomes.get(p.key, Outcome("not run", reason="the executor lost it"))
            rows.append(
                Row(p.config.run_name, o.status, o.best_test_acc, o.seconds, o.run_id, o.reason)
            )
    return rows


def _compare_into(parent_id: str, experiment: str, sweep_id: str, output_dir: str) -> None:
    from .compare import CompareError, run_compare

    try:
        _, counts = run_compare(
            experiment, sweep=sweep_id, output_dir=output_dir, into_run=parent_id
        )
    except CompareError as e:
        click.echo(f"no compare report: {e}", err=True)
        return
    click.echo(
        f"compare report ({counts['runs']} runs, {counts['configurations']} configurations): "
        f"{Path(output_dir) / 'report.md'}, logged to parent run {parent_id}"
    )


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _check_sweep_id(ctx, param, value: str | None) -> str | None:
    if value is not None and not SWEEP_ID.match(value):
        raise click.BadParameter(f"{value!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    return value


@_with_train_options
@click.command()
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False), default=None,
              help="YAML grid file: base options, lists of values per option (see grids/study.yaml); "
                   "default: the study (4 activations, 3 optimizers, 2 models: 7 configurations)")  # fmt: skip
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="train every configuration with N seeds, from --seed on")  # fmt: skip
@click.option("--sweep-id", callback=_check_sweep_id, default=None,
              help="resume this sweep: configurations it finished are skipped  [default: a new id]")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="print what would run and what is skipped, then exit")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: processes on this machine; ray: Ray Tune trials (pip install -e \".[ray]\")")  # fmt: skip
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="configurations at once (local: one GPU each, round robin)  [default: local 1, "
                   "ray: as the cluster's resources allow]")  # fmt: skip
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="a running Ray cluster (host:port, ray://host:10001, auto)  [default: start a local Ray]")  # fmt: skip
@click.option("--cpus-per-trial", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option(
    "--gpus-per-trial",
    type=click.FloatRange(min=0),
    default=None,
    help="[default: 1 where the Ray cluster has GPUs and --device is not cpu, else 0]",
)
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help=f"where the compare report is written  [default: {DEFAULT_OUTPUT_ROOT}/SWEEP_ID]")  # fmt: skip
@click.pass_context
def command(ctx, grid_file, seeds, sweep_id, dry_run, executor, parallel, ray_address,
            cpus_per_trial, gpus_per_trial, output_dir, **options) -> None:  # fmt: skip
    """Train a whole grid of configurations as one tracked, resumable sweep."""
    grid, base, seed_list = requested_grid(ctx, options, grid_file, seeds)
    execution = Execution(executor, parallel, ray_address, cpus_per_trial, gpus_per_trial)
    run_sweep(grid, base, seed_list, sweep_id or _new_sweep_id(), dry_run, execution, output_dir)
