"""`cifar-mlflow sweep`'s work: a whole study in one command, resumable, here or on a Ray cluster.

The grid (grid.py) is expanded into TrainConfigs; configurations an earlier invocation of the same
sweep id finished are skipped (plan.py), the others are trained, each in its own process
(executors.py) logging into a child run that the sweep created under its parent run
(tracking.sweeps). At the end the compare report is logged to the parent run, which
`compare --sweep ID` would also produce.

A child that did not finish is rerun in the same run: `train` continues it from its last
checkpoint (MLFLOW_RUN_ID), so a sweep stopped after epoch 30 of 40 loses at most one epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..compare.job import run_compare
from ..core.config import TrainConfig
from ..core.errors import UserError
from ..core.files import writable_folder
from ..core.redaction import redacted
from ..tracking import connection, sweeps
from ..tracking.runs import FINISHED, JOB_TAG, SWEEP_TAG, RunSpec, mark_launched_run, tracked_run
from ..tracking.training_runs import Selection, SelectionError, result_test_acc
from .cluster import check_reach
from .executors import Launch, Outcome, local_slots, run_local, visible_gpus
from .grid import Grid, expand
from .plan import Planned, child_args, make_plan, plan_lines
from .progress import Board, ConfigurationResult, results_table
from .ray_executor import check_ray_address, ray_session, run_ray, trial_gpus

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run


@dataclass(frozen=True)
class Execution:
    """Where and how the configurations train."""

    executor: str = "local"
    parallel: int | None = None  # local: runs_per_gpu per GPU; ray: as the cluster allows
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1/runs_per_gpu where the cluster has GPUs
    runs_per_gpu: int = 1  # trainings sharing a GPU (the CPU, where there is none) at once


def run_sweep(grid: Grid, base: TrainConfig, seeds: Sequence[int], sweep_id: str, dry_run: bool,
              execution: Execution, output_dir: str) -> None:  # fmt: skip
    on_ray = execution.executor == "ray"
    if not dry_run:  # the report comes last: a folder it cannot be written to is said first
        writable_folder(Path(output_dir), "--output-dir")
    if on_ray:
        check_ray(execution, connection.tracking_uri(), expand(base, grid.axes, seeds))
    uri = connection.connect()
    experiment = sweeps.sweep_experiment(base.experiment, create=not dry_run)
    name = experiment.name if experiment else base.experiment
    earlier = sweeps.earlier_sweep(experiment, sweep_id)
    plan = make_plan(expand(dataclasses.replace(base, experiment=name), grid.axes, seeds),
                     earlier.children)  # fmt: skip
    todo = [p for p in plan if p.action != "skip"]
    click.echo(
        f"sweep {sweep_id}: {len(plan)} configurations ({len(todo)} to train) in experiment "
        f"{name!r} on {redacted(uri)}\n  grid ({grid.source}): {grid.describe_axes()}; seeds "
        f"{', '.join(map(str, seeds))}"
    )
    click.echo("\n".join(plan_lines(plan)))
    if dry_run:
        # Under `mlflow run -e sweep` a run exists already: say what it was. Not tagged with the
        # sweep id, so that the sweep's real run is not mistaken for this one later.
        mark_launched_run(f"sweep-{sweep_id} (dry run)", {"dry_run": "true"})
        click.echo("dry run: nothing was started")
        return
    if not todo and earlier.parent is not None and earlier.parent.info.status == FINISHED:
        click.echo(f"nothing to train: every configuration has finished (parent run "
                   f"{earlier.parent.info.run_id})")  # fmt: skip
        return
    spec = _parent_spec(grid, base, seeds, sweep_id, name, len(plan), earlier.parent)
    devices = {p.config.device for p in todo}
    with ray_session(execution.ray_address) if on_ray else contextlib.nullcontext():
        gpus = 0.0
        if on_ray:  # before the parent run opens: GPUs the cluster lacks are refused
            gpus = trial_gpus(execution.gpus_per_trial, execution.runs_per_gpu, devices)
        with tracked_run(spec) as parent_id:
            found = _train(todo, experiment, parent_id, sweep_id, grid.tags, uri, execution, gpus)
            _report(_results(plan, found), parent_id, name, sweep_id, output_dir)
    click.echo(f"sweep {sweep_id} finished: parent run {parent_id}")


def _parent_spec(grid: Grid, base: TrainConfig, seeds: Sequence[int], sweep_id: str,
                 experiment: str, configurations: int, earlier: Run | None) -> RunSpec:  # fmt: skip
    return RunSpec(
        experiment=experiment, name=f"sweep-{sweep_id}",
        tags={**grid.tags, SWEEP_TAG: sweep_id, JOB_TAG: sweeps.JOB},
        params={"sweep.grid": grid.describe_axes()[:6000], "sweep.grid_source": grid.source,
                "sweep.seeds": " ".join(map(str, seeds)), "sweep.configurations": configurations,
                **{f"base.{k}": v for k, v in base.as_params().items()}},
        run_id=earlier.info.run_id if earlier else None,
    )  # fmt: skip


def _train(todo: Sequence[Planned], experiment: Experiment, parent_id: str, sweep_id: str,
           tags: Mapping[str, str], uri: str, execution: Execution,
           gpus: float) -> dict[str, Outcome]:  # fmt: skip
    """Train the configurations `todo` in child runs of the parent run, on Ray or here, with a
    line each on the board; returns each one's outcome by configuration key."""
    sweeps.nest_launched_run(parent_id, sweep_id)
    run_ids = sweeps.schedule_children(
        experiment, parent_id, sweep_id, [(p.key, p.config.run_name, p.previous) for p in todo],
        tags,
    )  # fmt: skip
    launches = _launches(todo, run_ids, uri, experiment)
    with Board([p.config.run_name for p in todo], [p.config.epochs for p in todo]) as board:
        if execution.executor == "ray":
            found = run_ray(launches, board, execution.cpus_per_trial, gpus, execution.parallel,
                            f"sweep-{sweep_id}")  # fmt: skip
        else:
            gpu_ids = visible_gpus() if {p.config.device for p in todo} - {"cpu"} else []
            slots = local_slots(execution.parallel, execution.runs_per_gpu, gpu_ids)
            found = run_local(launches, board, slots)
    return {todo[i].key: outcome for i, outcome in found.items()}


def _report(results: Sequence[ConfigurationResult], parent_id: str, experiment: str,
            sweep_id: str, output_dir: str) -> None:  # fmt: skip
    """The results table, and the compare report on the parent run; a configuration that did
    not finish makes the parent end FAILED and the sweep exit non-zero."""
    click.echo(results_table(results))
    if any(r.status == FINISHED for r in results):
        _compare_into(parent_id, experiment, sweep_id, output_dir)
    failed = [r for r in results if r.status != FINISHED]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(results)} configurations did not finish: run the same "
            f"command with --sweep-id {sweep_id} to retry them"
        )


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
        )
        for i, (p, run_id) in enumerate(zip(todo, run_ids))
    ]


def check_ray(execution: Execution, uri: str, configs: Sequence[TrainConfig]) -> None:
    """Before anything starts: trials on a cluster must reach the tracking server and the data
    (cluster.check_reach), and the cluster must answer."""
    check_reach(execution.ray_address, uri, {c.data_dir for c in configs})
    check_ray_address(execution.ray_address)


def _results(
    plan: Sequence[Planned], outcomes: Mapping[str, Outcome]
) -> list[ConfigurationResult]:
    results = []
    for p in plan:
        if p.action == "skip":
            run = p.previous
            results.append(ConfigurationResult(
                p.config.run_name, FINISHED, result_test_acc(run.data.metrics), None,
                run.info.run_id, earlier=True,
            ))  # fmt: skip
        else:
            o = outcomes.get(p.key, Outcome("not run", reason="the executor lost it"))
            results.append(ConfigurationResult(p.config.run_name, o.status, o.test_acc,
                                               o.seconds, o.run_id, o.reason))  # fmt: skip
    return results


def _compare_into(parent_id: str, experiment: str, sweep_id: str, output_dir: str) -> None:
    try:
        _, counts = run_compare(
            Selection(experiment, sweep=sweep_id), output_dir, into_run=parent_id
        )
    except SelectionError as e:
        click.echo(f"no compare report: {e}", err=True)
        return
    click.echo(
        f"compare report ({counts['runs']} runs, {counts['configurations']} configurations): "
        f"{Path(output_dir) / 'report.md'}, logged to parent run {parent_id}"
    )
