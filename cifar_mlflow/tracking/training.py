"""What a training run records beyond its epochs (the outbox sends those): the run itself, the
facts of the run (device, data, model size), the summary at the end, and the config read back
to resume it."""

from __future__ import annotations

import subprocess
from dataclasses import fields
from pathlib import Path

import mlflow
import torch

from ..core.config import UNRECORDED, TrainConfig
from ..core.engine import EpochMetrics
from ..core.selection import best_epoch
from .connection import TrackingError
from .runs import RunSpec, get_run
from .training_runs import TRAINED_BY, TRAINED_BY_TAG

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Settings a run recorded before they existed: read back as their default.
ADDED_LATER = ("checkpoint_every",)
FACTOR_TAGS = ("model", "activation", "optimizer")  # compare and export select runs on these


def training_run(
    config: TrainConfig, run_id: str | None = None, tags: dict[str, str] | None = None,
    name: str | None = None,
) -> RunSpec:  # fmt: skip
    """The run a training records into: `run_id` (being resumed), else as RunSpec decides; named
    `name`, else by its configuration (`resnet18-relu-sgd-s0`)."""
    return RunSpec(
        experiment=config.experiment,
        name=name or config.run_name,
        tags={**{k: getattr(config, k) for k in FACTOR_TAGS}, TRAINED_BY_TAG: TRAINED_BY,
              **(tags or {})},  # fmt: skip
        params={**config.as_params(), "torch_version": torch.__version__,
                "git_commit": git_commit()},
        run_id=run_id,
        system_metrics=config.system_metrics,
    )  # fmt: skip


def log_facts(facts: dict[str, object]) -> None:
    """The facts of this run (device, data source, image counts, model size) as params, and
    the model's size as metrics too, so the UI can chart and sort by them."""
    mlflow.log_params(facts)
    mlflow.log_metrics({k: float(facts[k]) for k in ("model_params", "model_flops") if k in facts})


def epoch_times(history: list[EpochMetrics], resumed_after: int = 0) -> dict[str, float]:
    """The mean epoch time, and the same without the first epoch this process trained (it pays
    for compiling and cuDNN's autotuning): `epoch_seconds_mean`, `epoch_seconds_mean_warm`."""
    trained = [m.epoch_seconds for m in history[resumed_after:]]
    times = {"epoch_seconds_mean": sum(trained) / len(trained)} if trained else {}
    if len(trained) > 1:
        times["epoch_seconds_mean_warm"] = sum(trained[1:]) / len(trained[1:])
    return times


def log_summary_metrics(history: list[EpochMetrics], stopped_early: str | None = None,
                        resumed_after: int = 0) -> None:  # fmt: skip
    """What the run is judged by, at the step of its last epoch: the epoch chosen on validation
    (`best_epoch`, `best_val_acc`), the test accuracy of that epoch (`test_acc_at_best`: reported,
    never used to choose), and the last epoch's (`final_test_acc`). No maximum of test accuracy
    over epochs: that would be a number chosen on the test set. And how long its epochs took
    (`epoch_times`, over the epochs after `resumed_after`)."""
    if stopped_early:
        mlflow.set_tag("stopped_early", stopped_early)
    final = history[-1]
    summary = {"final_test_acc": final.test_acc, **epoch_times(history, resumed_after)}
    best = best_epoch((m.epoch, m.val_acc) for m in history)
    if best is not None:
        at_best = next(m for m in history if m.epoch == best.epoch)
        summary |= {"best_epoch": best.epoch, "best_val_acc": best.val_acc,
                    "test_acc_at_best": at_best.test_acc}  # fmt: skip
    mlflow.log_metrics(summary, step=final.epoch)


def logged_config(run_id: str) -> TrainConfig:
    """The TrainConfig a run was started with, read back from its params (a setting the run
    did not record: what runs trained with before it was one, core.config.UNRECORDED)."""
    params = {**UNRECORDED, **get_run(run_id).data.params}
    parse = {"str": str, "int": lambda s: int(float(s)), "float": float,
             "bool": lambda s: s.lower() == "true"}  # fmt: skip
    try:
        return TrainConfig(**{f.name: parse[f.type](params[f.name]) for f in fields(TrainConfig)
                              if f.name in params or f.name not in ADDED_LATER})
    except (KeyError, ValueError) as e:
        raise TrackingError(
            f"run {run_id} was not recorded by `cifar-mlflow train` (param {e} missing or "
            "unreadable): it cannot be resumed"
        ) from None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
