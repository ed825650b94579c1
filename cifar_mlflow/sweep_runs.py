"""The MLflow side of a sweep: its parent run, a child run per configuration, and what an earlier
invocation of the same sweep id left there.

The parent run carries the tags `sweep_id` and job=sweep; each child is nested under it
(mlflow.parentRunId) and carries `sweep_id` and `sweep_config`, a hash of what it trains, by which
a rerun of the sweep recognises it. Children are created SCHEDULED, before any trains, so the
tracking UI shows the whole plan; `train` sets each RUNNING when it attaches (MLFLOW_RUN_ID).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import click
import mlflow
from mlflow.entities import Experiment, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from . import tracking
from .compare import SWEEP_TAG
from .config import TrainConfig
from .errors import UserError
from .grid import config_key

CONFIG_TAG = "sweep_config"
JOB_TAG = {"job": "sweep"}


@dataclass(frozen=True)
class Planned:
    """One configuration of the sweep and its run in an earlier invocation, if any."""

    config: TrainConfig
    key: str
    previous: Run | None

    @property
    def action(self) -> str:
        if self.previous is None:
            return "run"
        return "skip" if self.previous.info.status == "FINISHED" else "rerun"


def sweep_experiment(client: MlflowClient, name: str, create: bool) -> Experiment | None:
    """The experiment `mlflow run` chose (its run is in MLFLOW_RUN_ID), else `name`."""
    launched = tracking.launched_run_id()
    if launched:
        return client.get_experiment(tracking.get_run(launched).info.experiment_id)
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise UserError(
            f"experiment {name!r} is deleted: restore it, or choose another with --experiment"
        )
    if found is None and create:
        found = client.get_experiment(client.create_experiment(name))
    return found


def earlier_runs(
    client: MlflowClient, experiment: Experiment | None, sweep_id: str
) -> tuple[Run | None, dict[str, Run]]:
    """The sweep's parent run and its children by configuration key. Should a configuration have
    several runs (two invocations at once), a finished one counts, else the latest."""
    if experiment is None:
        return None, {}
    runs = mlflow.search_runs(
        [experiment.experiment_id], f"tags.{SWEEP_TAG} = '{sweep_id}'", output_format="list"
    )
    parents = [r for r in runs if r.data.tags.get("job") == JOB_TAG["job"]]
    children: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.info.status == "FINISHED", r.info.start_time or 0)):
        if CONFIG_TAG in run.data.tags:
            children[run.data.tags[CONFIG_TAG]] = run
    return (min(parents, key=lambda r: r.info.start_time) if parents else None), children


def make_plan(configs: Sequence[TrainConfig], children: Mapping[str, Run]) -> list[Planned]:
    return [Planned(c, config_key(c), children.get(config_key(c))) for c in configs]


def plan_lines(plan: Sequence[Planned]) -> list[str]:
    width = max(len(p.config.run_name) for p in plan)
    lines = []
    for p in plan:
        note = ""
        if p.previous is not None:
            run = p.previous
            if p.action == "skip":
                acc = run.data.metrics.get("best_test_acc")
                note = f"finished in run {run.info.run_id}" + (
                    f", best test acc {acc:.4f}" if acc is not None else ""
                )
            else:
                reason = run.data.tags.get(tracking.FAILURE_TAG)
                note = f"{run.info.status} in run {run.info.run_id}" + (
                    f": {reason}" if reason else ""
                )
                note += "; continues from its last checkpoint, if any"
        lines.append(f"  {p.action:<5}  {p.config.run_name:<{width}}  {note}".rstrip())
    return lines


def child_args(config: TrainConfig) -> tuple[str, ...]:
    """The `cifar-mlflow train` options that make exactly `config`."""
    args = []
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        args += [
            "--" + f.name.replace("_", "-"),
            str(value).lower() if isinstance(value, bool) else str(value),
        ]
    return tuple(args)


def open_parent(client: MlflowClient, experiment: Experiment, parent: Run | None, sweep_id: str,
                params: Mapping[str, str]) -> str:  # fmt: skip
    """The sweep's parent run, RUNNING: the earlier invocations' one, else the run `mlflow run`
    made, else a new one. A run `mlflow run` made for a resumed sweep is nested under it."""
    launched = tracking.launched_run_id()
    if parent is not None:
        client.update_run(parent.info.run_id, status="RUNNING")
        if launched and launched != parent.info.run_id:
            client.set_tag(launched, MLFLOW_PARENT_RUN_ID, parent.info.run_id)
            client.set_tag(launched, SWEEP_TAG, sweep_id)
        return parent.info.run_id
    run_id = (
        launched
        or client.create_run(experiment.experiment_id, run_name=f"sweep-{sweep_id}").info.run_id
    )
    tags = {SWEEP_TAG: sweep_id, **JOB_TAG}
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    return run_id


def schedule(client: MlflowClient, experiment: Experiment, parent_id: str, sweep_id: str,
             todo: Sequence[Planned]) -> list[str]:  # fmt: skip
    """A SCHEDULED child run per configuration to train (the earlier run where there is one)."""
    run_ids = []
    for p in todo:
        if p.previous is not None:
            run_id = p.previous.info.run_id
            if tracking.FAILURE_TAG in p.previous.data.tags:
                client.delete_tag(run_id, tracking.FAILURE_TAG)
        else:
            tags = {MLFLOW_PARENT_RUN_ID: parent_id, SWEEP_TAG: sweep_id, CONFIG_TAG: p.key}
            run_id = client.create_run(
                experiment.experiment_id, tags=tags, run_name=p.config.run_name
            ).info.run_id
        client.update_run(run_id, status="SCHEDULED")
        run_ids.append(run_id)
    return run_ids


def end_parent(client: MlflowClient, parent_id: str, error: BaseException) -> None:
    """KILLED on Ctrl-C, else FAILED, with the reason; quickly, as the server may be what failed."""
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    with tracking._env(tracking.QUICK_EXIT_RETRIES):
        try:
            client.set_tag(parent_id, tracking.FAILURE_TAG, tracking.failure_reason(error))
            client.set_terminated(parent_id, status)
        except Exception as e:
            click.echo(
                f"could not mark the sweep's parent run {status} ({type(e).__name__})", err=True
            )
