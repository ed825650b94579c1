"""`cifar-mlflow compare`: grouping and numbers as pure functions, then real runs on the real server.

Synthetic runs are logged through the trainer's own tracking functions (training_run, log_setup,
log_epoch, log_summary) with fabricated EpochMetrics, so they look exactly like trained ones.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from cifar_mlflow import tracking as tracking_module
from cifar_mlflow.cli import cli
from cifar_mlflow.compare import BULK_MAX_RUNS, command, fetch_histories
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.engine import EpochMetrics
from cifar_mlflow.study import (
    Curve, RunRecord, effective_config, find_comparisons, group_configurations, seed_band,
    table_rows,
)  # fmt: skip

from .conftest import PROJECT_ROOT, free_port

MODEL_PARAMS = {"resnet18": 11173962, "ghost_resnet18": 5706186}


def fabricated_history(config: TrainConfig, quality: float = 0.0) -> list[EpochMetrics]:
    """Plausible curves that differ by config and seed, so every number in the table is distinct."""
    rng = np.random.default_rng(zlib.crc32(repr(config).encode()))
    ceiling = 0.6 + quality + rng.uniform(0, 0.05)
    history = []
    for epoch in range(1, config.epochs + 1):
        progress = 1 - math.exp(-epoch / 3)
        test_acc = ceiling * progress + rng.uniform(-0.02, 0.02)
        history.append(EpochMetrics(
            epoch=epoch, train_loss=2.3 * (1 - progress) + 0.2, train_acc=min(1, test_acc + 0.05),
            test_loss=2.3 * (1 - progress) + 0.4, test_acc=test_acc, lr=config.lr,
            epoch_seconds=(30 if config.model == "resnet18" else 20) + rng.uniform(0, 2),
            images_per_second=1000 + rng.uniform(0, 100),
        ))  # fmt: skip
    return history


def log_synthetic_run(
    experiment: str, quality: float = 0.0, status: str = "FINISHED",
    tags: dict[str, str] | None = None, **config: object,
) -> str:  # fmt: skip
    """Log a training run with fabricated metrics; `status` FAILED leaves it failed mid-way."""
    config = TrainConfig(experiment=experiment, system_metrics=False, **{"epochs": 4, **config})
    history = fabricated_history(config, quality)
    facts = {"device": "cpu", "model_params": MODEL_PARAMS[config.model], "model_flops": 1}
    try:
        with tracking_module.training_run(config) as run:
            tracking_module.log_setup(config, facts)
            mlflow.set_tags(tags or {})
            for metrics in history[: 2 if status == "FAILED" else None]:
                tracking_module.log_epoch(metrics)
            if status == "FAILED":
                raise RuntimeError("a crash mid-run")
            tracking_module.log_summary(history)
    except RuntimeError:
        pass
    return run.info.run_id
