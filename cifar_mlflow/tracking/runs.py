"""The run lifecycle, written once for every command that records an MLflow run (train, compare,
export, the sweep's parent; a sweep's children are trainings and so use it too).

`tracked_run` opens the run (a run to continue, else the one `mlflow run` created for this
process, else a new one), logs its tags and the params it does not hold yet, and ends it:
FINISHED when the block completes, FAILED with a `failure_reason` tag on an error, KILLED on
SIGINT/SIGTERM (core.signals turns both into a KeyboardInterrupt). A run is never left RUNNING
while the server can be reached. `end_abandoned` ends a run whose own process could not (killed
hard): the sweep uses it for its children.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import Experiment, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from ..core.errors import UserError
from ..core.redaction import redacted
from .connection import TrackingError, is_http, tracking_uri

FAILURE_TAG = "failure_reason"  # on FAILED and KILLED runs: why the run did not finish
JOB_TAG = "job"  # what made a run other than a training: compare, export, sweep
SWEEP_TAG = "sweep_id"  # the sweep a run belongs to (its parent and its children)
TUNED_FROM_TAG = "tuned_from"  # on `sweep --tuned` runs: the tune whose settings they train at
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"  # MLflow's RunStatus names
UNFINISHED = ("RUNNING", "SCHEDULED")
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# MLflow names a run created without a name "<adjective>-<noun>-<number>" (`mlflow run` without
# --run-name does): such a run takes the command's name; a name someone gave is kept.
GENERATED_NAME = re.compile(r"^[a-z]+-[a-z]+-\d{1,3}$")
# MLflow retries a failed request for ~4 minutes (7 retries, backoff 2 s doubling). Right while
# working, wrong on the way out after a failure, when the server may be what failed.
QUICK_EXIT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """The run a command records into: `run_id` if given (a run to continue), else the run
    `mlflow run` created for this process (MLFLOW_RUN_ID), else a new run `name` in
    `experiment`. `tags` are set and `params` logged except those the run already holds
    (`mlflow run` logs its parameters as typed, "1e-2", and MLflow refuses a second spelling)."""

    experiment: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, object] = field(default_factory=dict)
    run_id: str | None = None
    system_metrics: bool = False


@contextlib.contextmanager
def tracked_run(spec: RunSpec) -> Iterator[str]:
    """Open the run `spec` names, yield its id, and end it as the module docstring says."""
    if spec.system_metrics:
        mlflow.enable_system_metrics_logging()
    else:
        mlflow.disable_system_metrics_logging()
    run_id = _start(spec).info.run_id
    try:
        _record_start(run_id, spec)
        yield run_id
    except KeyboardInterrupt as e:
        _end_active(KILLED, e)
        e.add_note(f"run {run_id} is marked KILLED")
        raise
    except BaseException as e:
        _end_active(FAILED, e)
        raise
    mlflow.end_run(FINISHED)


def _start(spec: RunSpec) -> mlflow.ActiveRun:
    # A run opened inside another one (a tune's trial inside its configuration's run) is nested
    # under it: MLflow tags a new one with its parent, and refuses any without `nested`.
    nested = mlflow.active_run() is not None
    run_id = spec.run_id or launched_run_id()
    if run_id:
        run = get_run(run_id)
        if not spec.run_id and run.info.status == FINISHED:
            raise UserError(stale_launched_run(run_id))
        mark_model_training(MlflowClient().get_experiment(run.info.experiment_id))
        # The fluent API refuses a run outside its active experiment (this process may have
        # worked in another one before): continue in the run's own.
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        active = mlflow.start_run(run_id=run_id, nested=nested)
        if GENERATED_NAME.match(run.info.run_name or ""):  # `mlflow run` without --run-name
            MlflowClient().set_tag(run_id, MLFLOW_RUN_NAME, spec.name)
        return active
    # Not set_experiment(name): it exports MLFLOW_EXPERIMENT_ID into this process's environment,
    # which every process started later (a sweep's children, `mlflow run`) would inherit.
    return mlflow.start_run(
        experiment_id=experiment_id(spec.experiment), run_name=spec.name, nested=nested
    )


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if it does not exist, in model-training mode
    (mark_model_training). Several processes may create it at once (tests/test_concurrency.py):
    the one that loses the race reads the winner's."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    mark_model_training(usable(found))
    return found.experiment_id


def mark_model_training(experiment: Experiment) -> None:
    """The MLflow UI opens an experiment by its kind: GenAI mode (traces, judges, prompts) unless
    it is tagged for model training (runs, models, the registry). An experiment this tool records
    into gets that tag, unless someone chose a kind already."""
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
        )


def usable(experiment: Experiment) -> Experiment:
    """`experiment`, unless it is deleted (MLflow keeps its name taken)."""
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment {experiment.name!r} is deleted: restore it (`mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`, or in the MLflow UI), or choose "
            "another name"
        )
    return experiment


def check_experiment(name: str) -> None:
    """Refuse now, before any work, an experiment a new run could not be filed in: a deleted one.
    (A name MLflow refuses is stopped by the option's rule, options.EXPERIMENT_NAME.)"""
    found = MlflowClient().get_experiment_by_name(name)
    if found is not None:
        usable(found)


def _record_start(run_id: str, spec: RunSpec) -> None:
    """Tags, the params not logged yet, and no failure reason left from an earlier attempt."""
    client = MlflowClient()
    held = client.get_run(run_id).data
    params = [Param(k, redacted(str(v))) for k, v in spec.params.items() if k not in held.params]
    tags = [RunTag(k, redacted(str(v))) for k, v in spec.tags.items()]
    if params or tags:
        client.log_batch(run_id, params=params, tags=tags)
    if FAILURE_TAG in held.tags:
        client.delete_tag(run_id, FAILURE_TAG)


def _end_active(status: str, error: BaseException) -> None:
    """Best effort and quick: when the server is what failed, the error that brought us here is
    the one to report."""
    if getattr(error, "foreign_writer", False):
        # lease.LeaseLost: another process writes the run now; its status is left as that
        # process has it (MLflow's only way to leave the active run is to end it: with the
        # status the run holds, it stays as it is).
        held = "RUNNING"
        with contextlib.suppress(Exception):
            held = MlflowClient().get_run(mlflow.active_run().info.run_id).info.status
        with contextlib.suppress(Exception):
            mlflow.end_run(held)
        return
    if getattr(error, "unmarkable", False):
        # connection.RunRefused for a run deleted (or unreadable) on the server: it cannot be
        # marked, the error says so, and each try would only add a warning. Leave it here only.
        with contextlib.suppress(Exception):
            mlflow.end_run(status)
        return
    with _env(QUICK_EXIT_RETRIES):
        try:
            mlflow.set_tag(FAILURE_TAG, failure_reason(error))
        except Exception as e:
            _log.warning("could not tag the run with its failure reason (%s)", type(e).__name__)
        try:
            mlflow.end_run(status)  # leaves the active run even if it raises
        except Exception as e:
            _log.warning("could not mark the run %s (%s)", status, type(e).__name__)


def end_abandoned(client: MlflowClient, run_id: str, reason: str, status: str = FAILED) -> str:
    """End a run its own process left unfinished (killed hard, or dead before it attached):
    `status` (FAILED, or KILLED where it was stopped on purpose) with `reason`. A run that did
    end keeps its status. Returns the run's status."""
    held = client.get_run(run_id).info.status
    if held not in UNFINISHED:
        return held
    client.set_tag(run_id, FAILURE_TAG, redacted(reason))
    client.set_terminated(run_id, status)
    return status


def failure_reason(error: BaseException) -> str:
    """One line, short enough for a tag: our own errors say what happened; others get their type."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, (UserError, KeyboardInterrupt)):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return redacted(text or "interrupted")[:500]


def launched_run_id() -> str | None:
    """The run `mlflow run` created (or relaunched, with --run-id) for this process."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def stale_launched_run(run_id: str) -> str:
    """Why a finished run named by MLFLOW_RUN_ID is not recorded into, and what to do."""
    return (
        f"MLFLOW_RUN_ID={run_id} names a run that has already finished, so it cannot be "
        "recorded into: unset MLFLOW_RUN_ID (`mlflow run` sets it for the process it starts; "
        "one left in the shell sends every command's results to that run)"
    )


def mark_launched_run(name: str, tags: Mapping[str, str]) -> None:
    """Name and tag the run `mlflow run` made for this process when the command records nothing
    into it (`sweep --dry-run`: tag dry_run), so it is not left a nameless empty run. Outside
    `mlflow run`, nothing."""
    run_id = launched_run_id()
    if run_id:
        tags = {MLFLOW_RUN_NAME: name, **tags}
        MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def ui_route(experiment_id: str, run_id: str | None = None, page: str = "") -> str:
    """The MLflow UI's own route to an experiment, a run, or a run's `page` (`artifacts/x.csv`)
    (what follows the server's address; its Markdown views resolve it as it is), opening in
    model-training mode: MLflow 3.17's UI opens every page in GenAI mode unless the address says
    otherwise or the user flipped its switch (which the browser remembers); it does not read the
    experiment's kind tag."""
    run = f"/runs/{run_id}" if run_id else ""
    page = f"/{page}" if page else ""
    return f"#/experiments/{experiment_id}{run}{page}?workflowType=machine_learning"


def ui_url(experiment_id: str, run_id: str | None = None) -> str | None:
    """ui_route on the tracking server, without credentials; None unless runs go to a server."""
    uri = tracking_uri()
    if not is_http(uri):
        return None
    return f"{redacted(uri).rstrip('/')}/{ui_route(experiment_id, run_id)}"


def get_run(run_id: str) -> Run:
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as e:
        # INVALID_PARAMETER_VALUE: not even the shape of a run id (MLflow checks it client-side).
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise TrackingError(
            f"no run {run_id!r} on {tracking_uri()}: check the id (printed when a run starts) and "
            "MLFLOW_TRACKING_URI"
        ) from None


def quick_exit() -> contextlib.AbstractContextManager[None]:
    """MLflow's requests in the block retried once, with a short timeout (QUICK_EXIT_RETRIES):
    for the last calls on the way out."""
    return _env(QUICK_EXIT_RETRIES)


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
