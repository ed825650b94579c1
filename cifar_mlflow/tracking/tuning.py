"""The MLflow side of a tune: one parent run per tune, a child per configuration, a grandchild
per trial (a training run), what an earlier invocation of the same tune id left there, the best
setting per configuration, and the tuned settings read back for `sweep --tuned`.

Every run carries the tag `tune_id`; the parent has job=tune, a configuration's run
job=tune-configuration and `tune_config` (the hash of what it trains, as the sweep's children
have), a trial `tune_config` and `tune_trial`. The configuration and trial runs are opened inside
their parent's (runs.tracked_run nests them). A pruned trial ends FINISHED, tagged `pruned=true`
and `pruned_at_epoch`. Each configuration's run holds its best trial's run id and settings as
tags (a rerun may find a better one: params could not change) and `best_val_acc` as a metric.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import mlflow
from mlflow.entities import Experiment, Metric, Run, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ..core.config import TrainConfig
from ..core.errors import UserError
from .records import log_figure, log_table
from .runs import FINISHED, JOB_TAG, RunSpec, end_abandoned, tracked_run
from .training import logged_config

TUNE_TAG = "tune_id"
CONFIG_TAG = "tune_config"
TRIAL_TAG = "tune_trial"
JOB, CONFIG_JOB = "tune", "tune-configuration"
PRUNED_TAG, PRUNED_EPOCH_TAG = "pruned", "pruned_at_epoch"
BEST_RUN_TAG = "best_trial_run"
TUNED_TAGS = ("tuned_lr", "tuned_weight_decay")  # on a configuration's run: its best settings
PARENT_TAG = MLFLOW_PARENT_RUN_ID


@dataclass(frozen=True)
class TrialRecord:
    """One trial as its run on the tracking server has it."""

    config_key: str
    trial: str
    run_id: str
    outcome: str  # complete, pruned, failed, killed (or running: not ended yet)
    lr: float
    weight_decay: float
    best_val_acc: float | None
    epochs_done: int
    reason: str = ""


@dataclass(frozen=True)
class EarlierTune:
    """What earlier invocations of a tune left on the server."""

    parent: Run | None
    configurations: Mapping[str, Run]  # by configuration key
    trials: Sequence[TrialRecord]


def earlier_tune(experiment: Experiment | None, tune_id: str) -> EarlierTune:
    if experiment is None:
        return EarlierTune(None, {}, [])
    runs = mlflow.search_runs(
        [experiment.experiment_id], f"tags.{TUNE_TAG} = '{tune_id}'", output_format="list"
    )
    parents = sorted((r for r in runs if r.data.tags.get(JOB_TAG) == JOB),
                     key=lambda r: r.info.start_time)  # fmt: skip
    configurations = {r.data.tags[CONFIG_TAG]: r for r in runs
                      if r.data.tags.get(JOB_TAG) == CONFIG_JOB}  # fmt: skip
    trials = [trial_record(r) for r in runs if TRIAL_TAG in r.data.tags]
    return EarlierTune(parents[0] if parents else None, configurations, trials)


def trial_record(run: Run) -> TrialRecord:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    outcome = {"FINISHED": "complete", "FAILED": "failed", "KILLED": "killed"}.get(
        run.info.status, "running"
    )
    if outcome == "complete" and tags.get(PRUNED_TAG) == "true":
        outcome = "pruned"
    return TrialRecord(
        config_key=tags[CONFIG_TAG], trial=tags[TRIAL_TAG], run_id=run.info.run_id,
        outcome=outcome, lr=float(params.get("lr", "nan")),
        weight_decay=float(params.get("weight_decay", "0")),
        best_val_acc=metrics.get("best_val_acc"),
        epochs_done=int(tags.get(PRUNED_EPOCH_TAG) or params.get("epochs", 0)),
        reason=tags.get("failure_reason", ""),
    )  # fmt: skip


def trials_under(configuration_run: str) -> list[TrialRecord]:
    """The trials of a configuration, by its run."""
    experiment_id = MlflowClient().get_run(configuration_run).info.experiment_id
    runs = mlflow.search_runs(
        [experiment_id], f"tags.`{PARENT_TAG}` = '{configuration_run}'",
        output_format="list",
    )  # fmt: skip
    return [trial_record(r) for r in runs if TRIAL_TAG in r.data.tags]


def parent_spec(experiment: str, tune_id: str, params: Mapping[str, object],
                earlier: Run | None) -> RunSpec:  # fmt: skip
    return RunSpec(
        experiment=experiment, name=f"tune-{tune_id}", tags={TUNE_TAG: tune_id, JOB_TAG: JOB},
        params=params, run_id=earlier.info.run_id if earlier else None,
    )  # fmt: skip


@contextlib.contextmanager
def tune_run(spec: RunSpec) -> Iterator[str]:
    """The tune's parent run (runs.tracked_run). The run `mlflow run` made for this process is
    the parent: once it is open, MLFLOW_RUN_ID must not make the trials reopen it too."""
    with tracked_run(spec) as run_id:
        os.environ.pop("MLFLOW_RUN_ID", None)
        yield run_id


def configuration_spec(experiment: str, tune_id: str, key: str, name: str,
                       params: Mapping[str, object], earlier: Run | None) -> RunSpec:  # fmt: skip
    """A configuration's run: opened inside the parent's, so nested under it."""
    return RunSpec(
        experiment=experiment, name=name,
        tags={TUNE_TAG: tune_id, JOB_TAG: CONFIG_JOB, CONFIG_TAG: key}, params=params,
        run_id=earlier.info.run_id if earlier else None,
    )  # fmt: skip


def trial_tags(tune_id: str, key: str, configuration_run: str) -> dict[str, str]:
    """Tags of a configuration's trial runs, but their trial's id (`with_trial`). The parent tag
    nests a trial also where it is not opened inside its configuration's run (a Ray worker)."""
    return {TUNE_TAG: tune_id, CONFIG_TAG: key, PARENT_TAG: configuration_run}


def with_trial(tags: Mapping[str, str], trial: str) -> dict[str, str]:
    return {**tags, TRIAL_TAG: trial}


def mark_pruned(run_id: str, epoch: int) -> None:
    MlflowClient().log_batch(
        run_id, tags=[RunTag(PRUNED_TAG, "true"), RunTag(PRUNED_EPOCH_TAG, str(epoch))]
    )


def end_stopped_trial(run_id: str, epoch: int | None, best_val_acc: float | None,
                      reason: str) -> str:  # fmt: skip
    """A trial whose process Ray ended (a scheduler's stop, a dead worker) cannot end its run:
    stopped by the scheduler after an epoch (`epoch`), it is pruned, FINISHED; otherwise FAILED
    with `reason`. A run that did end keeps its status. Returns the status."""
    client = MlflowClient()
    status = client.get_run(run_id).info.status
    if status != "RUNNING":
        return status
    if epoch is None:
        return end_abandoned(client, run_id, reason)
    metrics = [] if best_val_acc is None else [Metric("best_val_acc", best_val_acc, 0, epoch)]
    tags = [RunTag(PRUNED_TAG, "true"), RunTag(PRUNED_EPOCH_TAG, str(epoch)),
            RunTag("stopped_early", reason)]  # fmt: skip
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.set_terminated(run_id, FINISHED)
    return FINISHED


def end_abandoned_trials(trials: Sequence[TrialRecord]) -> None:
    """Trial runs an earlier invocation left RUNNING (killed hard) end FAILED: the study failed
    those trials too (search.Search.fail_interrupted)."""
    client = MlflowClient()
    for trial in trials:
        if trial.outcome == "running":
            end_abandoned(client, trial.run_id, "its tune was killed")


def log_best(configuration_run: str, best: TrialRecord | None) -> None:
    """The best trial's settings on its configuration's run, as tags and metrics."""
    if best is None:
        return
    client = MlflowClient()
    tags = [RunTag(BEST_RUN_TAG, best.run_id), RunTag(TUNED_TAGS[0], f"{best.lr:.6g}"),
            RunTag(TUNED_TAGS[1], f"{best.weight_decay:.6g}")]  # fmt: skip
    metrics = [Metric("tuned_lr", best.lr, 0, 0)]
    if best.best_val_acc is not None:
        metrics.append(Metric("best_val_acc", best.best_val_acc, 0, 0))
    client.log_batch(configuration_run, metrics=metrics, tags=tags)


def log_tune_summary(parent_run: str, table: Mapping[str, list], figures: Mapping[str, object]) -> None:
    log_table(parent_run, table, "tune/best.json")
    for name, figure in figures.items():
        log_figure(parent_run, figure, f"tune/val_acc_vs_lr-{name}.png")


def tuned_configs(tune_id: str) -> list[TrainConfig]:
    """The best trial's config of every configuration of tune `tune_id` (its tuned lr and weight
    decay, the trial budget's epochs), from any experiment on the server."""
    runs = mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"tags.{TUNE_TAG} = '{tune_id}' AND tags.{JOB_TAG} = '{CONFIG_JOB}'",
    )  # fmt: skip
    if not runs:
        raise UserError(
            f"no tune {tune_id!r} on {mlflow.get_tracking_uri()}: give the id `cifar-mlflow tune` "
            "printed, and the same MLFLOW_TRACKING_URI"
        )
    untuned = [r.info.run_name for r in runs if BEST_RUN_TAG not in r.data.tags]
    if untuned:
        raise UserError(
            f"tune {tune_id}: configuration {untuned[0]} has no completed trial: finish the tune "
            f"(`cifar-mlflow tune --tune-id {tune_id}`), or lower its --lr-range"
        )
    return [logged_config(r.data.tags[BEST_RUN_TAG]) for r in sorted(runs, key=_started)]


def _started(run: Run) -> int:
    return run.info.start_time or 0
