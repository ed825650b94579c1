"""A training run's state at the end of an epoch, so that a stopped run can continue.

The state is everything the next epoch depends on: weights, optimizer and schedule state, every
random number generator (torch, numpy, Python, and the one that shuffles and augments the training
batches), the epochs done with their metrics, and the best epoch's weights so far (the run's
`best` model, core/selection.py). Restored into a freshly built Trainer, the rest
of a run on a CPU is bitwise identical to an uninterrupted one (tests/test_resume.py).

Files are written under a temporary name and renamed, so a reader finds a whole checkpoint or
none, and loaded with `weights_only=True`, so a checkpoint fetched from a server cannot run code.
No MLflow here: tracking/outbox.py moves the files to and from the run.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .engine import EpochMetrics, Trainer
from .errors import UserError
from .files import atomic_write
from .selection import BestWeights

FORMAT = "cifar-mlflow-checkpoint-2"  # 2: with the best epoch's weights


class CheckpointError(UserError):
    """A checkpoint that cannot be used to continue this run."""


def capture(trainer: Trainer, history: list[EpochMetrics], best: BestWeights) -> dict:
    """The state after the last epoch in `history` (call it before the next epoch starts)."""
    return {
        "best": best.state(history[-1].epoch),
        "format": FORMAT,
        "epoch": history[-1].epoch,
        "device_type": trainer.device.type,
        "config": trainer.config.as_params(),
        "history": [dataclasses.asdict(m) for m in history],
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "rng": _rng_states(trainer),
    }


def save(state: dict, path: Path) -> Path:
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a foreign pickle...: all mean "not ours, or damaged"
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifar-mlflow checkpoint ({FORMAT})")
    return state


def check_matches(state: dict, config: TrainConfig, device: torch.device) -> None:
    """A run continues with the settings it started with; anything else would be a different
    experiment under the same run id."""
    saved = state["config"]
    # A setting newer than the checkpoint is not a change (checkpoint_every: when to save).
    changed = [k for k, v in config.as_params().items() if k in saved and saved[k] != v]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise CheckpointError(
            f"the run's checkpoint was made with other settings ({diffs}): resume with the "
            "run's own settings (`cifar-mlflow train --resume RUN_ID` alone)"
        )
    if state["device_type"] != device.type:
        raise CheckpointError(
            f"the run's checkpoint was made on {state['device_type']}, this process would "
            f"train on {device.type}: its random number streams do not carry over; resume on "
            f"a {state['device_type']} machine"
        )


def restore(trainer: Trainer, state: dict) -> tuple[list[EpochMetrics], BestWeights]:
    """Put `state` into `trainer`; returns the epochs already done and the best so far."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.schedule.load_state_dict(state["schedule"])
    _set_rng_states(trainer, state["rng"])
    best = BestWeights.from_state(state["best"], trainer.model, state["epoch"])
    return [EpochMetrics(**m) for m in state["history"]], best


def _rng_states(trainer: Trainer) -> dict:
    # numpy's state holds an ndarray, which weights_only loading refuses: keep it as a tensor.
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "python": random.getstate(),
        "batches": trainer.train_batches.generator.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(trainer: Trainer, states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    trainer.train_batches.generator.set_state(states["batches"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
