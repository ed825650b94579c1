"""The MLflow side of a sweep: the experiment, what an earlier invocation of the same sweep id
left there, a child run per configuration, and how each child ended.

The parent run (opened with runs.tracked_run) carries the tags `sweep_id` and job=sweep; each
child is nested under it (mlflow.parentRunId) and carries `sweep_id` and `sweep_config`, a hash
of what it trains, by which a rerun of the sweep recognises it. Children are created SCHEDULED,
before any trains, so the tracking UI shows the whole plan; `train` sets each RUNNING when it
attaches (MLFLOW_RUN_ID).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlflow
import requests
from mlflow.entities import Experiment, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from .runs import (
    FAILED,
    FAILURE_TAG,
    FINISHED,
    JOB_TAG,
    SWEEP_TAG,
    end_abandoned,
    experiment_id,
    get_run,
    launched_run_id,
    usable,
)
from .training_runs import result_test_acc

CONFIG_TAG = "sweep_config"
JOB = "sweep"
OUTPUT_ARTIFACT = "sweep/train-output.txt"  # a failed child's last lines of output


@dataclass(frozen=True)
class ChildEnd:
    """How a child's run ended, as the tracking server has it."""

    status: str  # FINISHED, FAILED or KILLED
    reason: str = ""
    test_acc: float | None = None


def sweep_experiment(name: str, create: bool) -> Experiment | None:
    """The experiment `mlflow run` chose (its run is in MLFLOW_RUN_ID), else `name`."""
    client = MlflowClient()
    launched = launched_run_id()
    if launched:
        return client.get_experiment(get_run(launched).info.experiment_id)
    if create:
        return client.get_experiment(experiment_id(name))
    found = client.get_experiment_by_name(name)
    return usable(found) if found is not None else None


@dataclass(frozen=True)
class EarlierSweep:
    """What earlier invocations of a sweep left on the server."""

    parent: Run | None
    children: Mapping[str, Run]  # by configuration key


def earlier_sweep(experiment: Experiment | None, sweep_id: str) -> EarlierSweep:
    """The sweep's parent run and its children by configuration key. Should a configuration have
    several runs (two invocations at once), a finished one counts, else the latest."""
    if experiment is None:
        return EarlierSweep(None, {})
    runs = mlflow.search_runs(
        [experiment.experiment_id], f"tags.{SWEEP_TAG} = '{sweep_id}'", output_format="list"
    )
    parents = [r for r in runs if r.data.tags.get(JOB_TAG) == JOB]
    children: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.info.status == FINISHED, r.info.start_time or 0)):
        if CONFIG_TAG in run.data.tags:
            children[run.data.tags[CONFIG_TAG]] = run
    first = min(parents, key=lambda r: r.info.start_time) if parents else None
    return EarlierSweep(first, children)


def nest_launched_run(parent_id: str, sweep_id: str) -> None:
    """A run `mlflow run` made for a resumed sweep goes under the sweep's first parent."""
    launched = launched_run_id()
    if launched and launched != parent_id:
        MlflowClient().log_batch(
            launched, tags=[RunTag(MLFLOW_PARENT_RUN_ID, parent_id), RunTag(SWEEP_TAG, sweep_id)]
        )


def schedule_children(experiment: Experiment, parent_id: str, sweep_id: str,
                      todo: Sequence[tuple[str, str, Run | None]],
                      tags: Mapping[str, str] | None = None) -> list[str]:  # fmt: skip
    """A SCHEDULED child run for each (configuration key, run name, earlier run or None) to
    train: the earlier run where there is one (its old failure reason dropped), else a new one
    with `tags` besides its own (`tuned_from`, say)."""
    client = MlflowClient()
    run_ids = []
    for key, name, previous in todo:
        if previous is not None:
            run_id = previous.info.run_id
            if FAILURE_TAG in previous.data.tags:
                client.delete_tag(run_id, FAILURE_TAG)
        else:
            own = {MLFLOW_PARENT_RUN_ID: parent_id, SWEEP_TAG: sweep_id, CONFIG_TAG: key}
            run_id = client.create_run(
                experiment.experiment_id, tags={**(tags or {}), **own}, run_name=name
            ).info.run_id
        client.update_run(run_id, status="SCHEDULED")
        run_ids.append(run_id)
    return run_ids


def tag_child(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Tags on a child's run from where it trains (a Ray worker: the tracking URI explicit)."""
    MlflowClient(tracking_uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def settle_child(tracking_uri: str, run_id: str, reason_if_unfinished: str,
                 output: Sequence[str], status_if_unfinished: str = FAILED) -> ChildEnd:  # fmt: skip
    """How a child's run ended, once its process is gone. A run the process could not end
    (killed hard, dead before MLflow started) is ended here, FAILED unless the sweep says
    otherwise (KILLED: it stopped the child); a run that did not finish keeps the process's last
    lines of output as an artifact."""
    client = MlflowClient(tracking_uri)  # explicit: a Ray worker settles its own trial
    try:
        run = client.get_run(run_id)
        if run.info.status == FINISHED:
            return ChildEnd(FINISHED, "", result_test_acc(run.data.metrics))
        reason = run.data.tags.get(FAILURE_TAG) or reason_if_unfinished
        status = end_abandoned(client, run_id, reason, status_if_unfinished)
        if output:
            client.log_text(run_id, "\n".join(output) + "\n", OUTPUT_ARTIFACT)
        return ChildEnd(status, reason)
    except (MlflowException, requests.RequestException) as e:
        return ChildEnd("FAILED", f"the run could not be read back ({type(e).__name__})")

