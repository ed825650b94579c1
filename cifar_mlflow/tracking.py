"""Everything a training run records in MLflow, in one place.

The trainer and the tests that fabricate runs (for compare/export) log through these functions,
so a synthetic run looks exactly like a real one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import requests
import torch
from mlflow.entities import RunStatus
from mlflow.models import infer_signature

from .config import TrainConfig
from .engine import EpochMetrics
from .errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
REACHABLE_WITHIN_SECONDS = 10.0
PACKAGE_DIR = Path(__file__).resolve().parent


class TrackingError(UserError):
    """The tracking server cannot be used; the message says what is wrong and what to do."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect() -> str:
    """Point MLflow at the tracking URI, failing within ~10 s when an HTTP server is not there.

    MLflow's own client retries with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7,
    MLFLOW_HTTP_REQUEST_TIMEOUT=120), which is right mid-run and wrong at start-up.
    """
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        _wait_for_server(uri)
    mlflow.set_tracking_uri(uri)
    return uri


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
def training_run(config: TrainConfig) -> Iterator[mlflow.ActiveRun]:
    """The run to log into: the one `mlflow run` created (MLFLOW_RUN_ID), else a new one in
    `config.experiment`. It ends FINISHED, FAILED on an error, KILLED on Ctrl-C: never RUNNING."""
    if config.system_metrics:
        mlflow.enable_system_metrics_logging()
    else:
        mlflow.disable_system_metrics_logging()
    if os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    else:
        mlflow.set_experiment(config.experiment)
        run = mlflow.start_run(run_name=config.run_name)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_setup(config: TrainConfig, facts: dict[str, object]) -> None:
    """Log the config, the facts of this run (device, data source, model size...) and the tags
    that compare and export select on."""
    params = {**config.as_params(), **facts}
    params.setdefault("torch_version", torch.__version__)
    params.setdefault("git_commit", git_commit())
    mlflow.log_params(params)
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
