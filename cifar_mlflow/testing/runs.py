"""Synthetic training runs: opened, tagged and summarised by the trainer's own tracking code, so
compare and export see them exactly as trained ones; only the epochs are made up."""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ..core.config import TrainConfig
from ..core.engine import EpochMetrics
from ..tracking import training
from ..tracking.predictions import Predictions, log_predictions
from ..tracking.runs import tracked_run

MODEL_PARAMS = {"resnet18": 11173962, "ghost_resnet18": 5706186}


def fabricated_history(config: TrainConfig, quality: float = 0.0) -> list[EpochMetrics]:
    """Plausible curves that differ by config and seed, so every number in a table is distinct;
    with a validation split (config.val_size > 0), a validation curve near the test curve."""
    rng = np.random.default_rng(zlib.crc32(repr(config).encode()))
    ceiling = 0.6 + quality + rng.uniform(0, 0.05)
    history = []
    for epoch in range(1, config.epochs + 1):
        progress = 1 - math.exp(-epoch / 3)
        test_acc = ceiling * progress + rng.uniform(-0.02, 0.02)
        val_acc = test_acc + rng.uniform(-0.02, 0.02) if config.val_size else None
        history.append(EpochMetrics(
            epoch=epoch,
            train_loss=2.3 * (1 - progress) * (1 - quality) + rng.uniform(0.15, 0.25),
            train_acc=min(1, test_acc + 0.05), test_loss=2.3 * (1 - progress) + 0.4,
            test_acc=test_acc, lr=config.lr,
            epoch_seconds=(30 if config.model == "resnet18" else 20) + rng.uniform(0, 2),
            images_per_second=1000 + rng.uniform(0, 100),
            val_loss=None if val_acc is None else 2.3 * (1 - progress) + 0.45, val_acc=val_acc,
        ))  # fmt: skip
    return history


CLASSES = 10
SYNTHETIC_DIGEST = "synthetic-test-set"


def fabricated_outcomes(accuracy: float, images: int, seed: int) -> np.ndarray:
    """Per-image outcomes (True: right) of a model of about `accuracy`."""
    return np.random.default_rng(seed).random(images) < accuracy


def log_outcomes(run_id: str, outcomes: Mapping[str, np.ndarray],
                 digest: str = SYNTHETIC_DIGEST) -> None:  # fmt: skip
    """Each checkpoint's outcomes as a training run logs its predictions: test labels cycling
    through the classes, the prediction the label where right and the next class where wrong."""
    for checkpoint, correct in outcomes.items():
        labels = (np.arange(len(correct)) % CLASSES).astype(np.uint8)
        predicted = np.where(correct, labels, (labels + 1) % CLASSES).astype(np.uint8)
        log_predictions(checkpoint, Predictions(predicted, labels, digest), run_id=run_id)


def log_synthetic_run(
    experiment: str, quality: float = 0.0, status: str = "FINISHED",
    tags: dict[str, str] | None = None, outcomes: Mapping[str, np.ndarray] | None = None,
    **config: object,
) -> str:  # fmt: skip
    """Log a training run with fabricated epochs (4 unless `epochs` says otherwise); `status`
    FAILED leaves it failed after two epochs; `outcomes` ({checkpoint: per-image outcomes}):
    logged as its predictions. Returns its run id."""
    config = TrainConfig(experiment=experiment, system_metrics=False, **{"epochs": 4, **config})
    history = fabricated_history(config, quality)
    run_id = None
    try:
        with tracked_run(training.training_run(config)) as run_id:
            training.log_facts({"device_used": "cpu", "model_params": MODEL_PARAMS[config.model],
                                "model_flops": 1})  # fmt: skip
            mlflow.set_tags(tags or {})
            log_epochs(run_id, history[: 2 if status == "FAILED" else None])
            if outcomes:
                log_outcomes(run_id, outcomes)
            if status == "FAILED":
                raise RuntimeError("a crash mid-run")
            training.log_summary_metrics(history)
    except RuntimeError:
        pass
    return run_id


def log_epochs(run_id: str, history: list[EpochMetrics]) -> None:
    """Every epoch's metrics in one call (training sends them epoch by epoch, through the
    outbox; the result on the server is the same)."""
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now + m.epoch, m.epoch) for m in history for k, v in m.as_metrics().items()]
    MlflowClient().log_batch(run_id, metrics=metrics)
