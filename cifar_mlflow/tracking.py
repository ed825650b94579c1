"""Everything a training run records in MLflow, in one place.

The trainer and the tests that fabricate runs (for compare/export) log through these functions,
so a synthetic run looks exactly like a real one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import mlflow
import numpy as np
import requests
import torch
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from .config import TrainConfig
from .engine import EpochMetrics
from .errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
REACHABLE_WITHIN_SECONDS = 10.0
# A server that answered /health is there but may be slow: basic-auth hashes the password on
# every request (measured: 4-10 s per request on a loaded 2-core machine without its auth cache).
API_CHECK_SECONDS = 30
PACKAGE_DIR = Path(__file__).resolve().parent
FAILURE_TAG = "failure_reason"  # on FAILED and KILLED runs: why the run did not finish
# MLflow retries a failed request for ~4 minutes (7 retries, backoff 2 s doubling). Right while
# training, wrong on the way out after a failure, when the server may be what failed.
QUICK_EXIT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

_log = logging.getLogger(__name__)


class TrackingError(UserError):
    """The tracking server cannot be used; the message says what is wrong and what to do."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect() -> str:
    """Point MLflow at the tracking URI, failing within ~10 s when an HTTP server is not there
    or refuses our credentials.

    MLflow's own client retries with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7,
    MLFLOW_HTTP_REQUEST_TIMEOUT=120), which is right mid-run and wrong at start-up.
    """
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        _wait_for_server(uri)
        _check_credentials(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _check_credentials(uri: str) -> None:
    """/health answers anyone, even on a `--app-name basic-auth` server: one authenticated API
    call, with the credentials MLflow will use (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN),
    tells whether they work before a run is opened. Secrets never appear in the message."""
    creds = get_default_host_creds(uri)
    try:
        response = http_request(
            creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0,
            timeout=API_CHECK_SECONDS, raise_on_status=False, params={"max_results": 1},
        )  # fmt: skip
    except (MlflowException, requests.RequestException) as e:
        why = f"no answer within {API_CHECK_SECONDS} s" if "Timeout" in str(e) else type(e).__name__
        raise TrackingError(
            f"tracking server {uri} is up but failed an MLflow API call ({why}): see its log"
        ) from None
    who = f"user {creds.username!r}" if creds.username else "MLFLOW_TRACKING_TOKEN"
    if response.status_code == 401 and not (creds.username or creds.token):
        raise TrackingError(
            f"tracking server {uri} requires credentials (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 401:
        raise TrackingError(
            f"tracking server {uri} rejected the credentials of {who} (HTTP 401): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 403:
        raise TrackingError(f"tracking server {uri} denies {who} access (HTTP 403): ask its admin")
    if not response.ok:
        raise TrackingError(
            f"tracking server {uri} answered HTTP {response.status_code} to an MLflow API call: "
            "is MLFLOW_TRACKING_URI an MLflow server?"
        )


def _wait_for_server(uri: str) -> None:
    deadline = time.monotonic() + REACHABLE_WITHIN_SECONDS
    while True:
        try:
            response = requests.get(f"{uri.rstrip('/')}/health", timeout=3)
            if response.ok:
                return
            problem = f"answered HTTP {response.status_code}"
        except requests.RequestException as e:
            problem = f"is unreachable ({type(e).__name__})"
        if time.monotonic() >= deadline:
            raise TrackingError(
                f"tracking server {uri} {problem}: start it (mlflow server --host 127.0.0.1 "
                "--port PORT) or set MLFLOW_TRACKING_URI to a reachable server"
            )
        time.sleep(1.0)


@contextlib.contextmanager
def training_run(config: TrainConfig, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """The run to log into: `run_id` (a run being resumed), else the one `mlflow run` created
    (MLFLOW_RUN_ID), else a new one in `config.experiment`. It ends FINISHED, FAILED on an error,
    KILLED on a signal or Ctrl-C, with a `failure_reason` tag: never RUNNING while the server
    can be reached."""
    if config.system_metrics:
        mlflow.enable_system_metrics_logging()
    else:
        mlflow.disable_system_metrics_logging()
    run_id = run_id or launched_run_id()
    if run_id:
        # The fluent API refuses a run outside the active experiment (this process may have
        # trained in another one before): continue in the run's own.
        mlflow.set_experiment(experiment_id=get_run(run_id).info.experiment_id)
        run = mlflow.start_run(run_id=run_id)
    else:
        # The experiment id is passed on because set_experiment() does not make the experiment
        # active when another process created it a moment before (MLflow 3.17 returns early on
        # RESOURCE_ALREADY_EXISTS): the run then went to experiment 0 (tests/test_concurrency.py).
        experiment = mlflow.set_experiment(config.experiment)
        run = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=config.run_name)
    try:
        yield run
    except KeyboardInterrupt as e:
        _end_unfinished(RunStatus.KILLED, e)
        raise
    except BaseException as e:
        _end_unfinished(RunStatus.FAILED, e)
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def launched_run_id() -> str | None:
    """The run `mlflow run` created (or relaunched, with --run-id) for this process."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def _end_unfinished(status: int, error: BaseException) -> None:
    """Best effort and quick: when the server is what failed, the error that brought us here
    is the one to report."""
    with _env(QUICK_EXIT_RETRIES):
        try:
            mlflow.set_tag(FAILURE_TAG, failure_reason(error))
        except Exception as e:
            _log.warning("could not tag the run with its failure reason (%s)", type(e).__name__)
        try:
            mlflow.end_run(RunStatus.to_string(status))  # leaves the active run even if it raises
        except Exception as e:
            status_name = RunStatus.to_string(status)
            _log.warning("could not mark the run %s (%s)", status_name, type(e).__name__)


def failure_reason(error: BaseException) -> str:
    """One line, short enough for a tag: our own errors say what happened; others get their type."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, (UserError, KeyboardInterrupt)):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return (text or "interrupted")[:500]


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


def logged_config(run_id: str) -> TrainConfig:
    """The TrainConfig a run was started with, read back from its params."""
    params = get_run(run_id).data.params
    parse = {"str": str, "int": lambda s: int(float(s)), "float": float,
             "bool": lambda s: s.lower() == "true"}  # fmt: skip
    try:
        return TrainConfig(**{f.name: parse[f.type](params[f.name]) for f in fields(TrainConfig)})
    except (KeyError, ValueError) as e:
        raise TrackingError(
            f"run {run_id} was not recorded by `cifar-mlflow train` (param {e} missing or "
            "unreadable): it cannot be resumed"
        ) from None


def get_run(run_id: str) -> mlflow.entities.Run:
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(
            f"no run {run_id} on {tracking_uri()}: check the id (printed when a run starts) and "
            "MLFLOW_TRACKING_URI"
        ) from None


def log_setup(config: TrainConfig, facts: dict[str, object]) -> None:
    """Log the config, the facts of this run (device, data source, model size...) and the tags
    that compare and export select on."""
    params = {**config.as_params(), **facts}
    params.setdefault("torch_version", torch.__version__)
    params.setdefault("git_commit", git_commit())
    # `mlflow run` has already logged the MLproject parameters as the user typed them ("1e-2",
    # "false"); MLflow refuses a second, differently spelled value, and the meaning is the same.
    already = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in already})
    mlflow.set_tags(
        {"model": config.model, "activation": config.activation, "optimizer": config.optimizer}
    )
    if "model_params" in facts:
        mlflow.log_metric("model_params", float(facts["model_params"]))
    if "model_flops" in facts:
        mlflow.log_metric("model_flops", float(facts["model_flops"]))


def log_epoch(metrics: EpochMetrics) -> None:
    mlflow.log_metrics(metrics.as_metrics(), step=metrics.epoch)


def log_summary(history: list[EpochMetrics]) -> None:
    summary = {"best_test_acc": max(m.test_acc for m in history)}
    val = [m.val_acc for m in history if m.val_acc is not None]
    if val:
        summary["best_val_acc"] = max(val)
    mlflow.log_metrics(summary, step=history[-1].epoch)


def log_trained_model(model: torch.nn.Module, example_images: np.ndarray) -> str:
    """Log `model` (taking float RGB in [0, 1], N x 3 x 32 x 32) and its state_dict.

    Pickle format, so `mlflow.pytorch.load_model` returns our class, not pt2's GraphModule;
    explicit pip requirements, because inferring them costs ~15-20 s; the package source goes
    along in code_paths so the model loads where cifar_mlflow is not installed.
    """
    model = model.cpu().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example_images)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model_state.pt"
        torch.save(model.state_dict(), checkpoint)
        mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",
        signature=infer_signature(example_images, logits),
        input_example=example_images,
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
        ],
        code_paths=[str(PACKAGE_DIR)],
    )
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
