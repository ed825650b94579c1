"""A training run's state at the end of an epoch, so that a stopped run can continue.

The state is everything the next epoch depends on: weights, optimizer and schedule state, every
random number generator (torch, numpy, Python, and the one that shuffles and augments the training
batches), the epochs done with their metrics, and the best epoch's weights so far (the run's
`best` model, core/selection.py). Restored into a freshly built Trainer, the rest
of a run on a CPU is bitwise identical to an uninterrupted one (tests/test_resume.py).

When: `Policy` (`--checkpoint-every`: a time or a number of epochs), always after the last epoch
and when a signal stops the run. The state is copied off the device after every epoch (`capture`:
the training thread's only cost; measured in bench/bench_checkpoint.py) and written by `Writer`
on a thread of its own, so training goes on while the file is written, and a signal, which Python
delivers to the main thread, never lands inside a write.

Files are written under a temporary name and renamed, so a reader finds a whole checkpoint or
none, and loaded with `weights_only=True`, so a checkpoint fetched from a server cannot run code.
No MLflow here: tracking/outbox.py moves the files to and from the run.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig, checkpoint_interval
from .engine import EpochMetrics, Trainer
from .errors import UserError
from .files import atomic_write
from .selection import BestWeights

FORMAT = "cifar-mlflow-checkpoint-2"  # 2: with the best epoch's weights
# What `capture` writes and resuming reads: a file without one of them cannot be continued.
FIELDS = ("best", "epoch", "device_type", "config", "history", "model", "optimizer", "schedule",
          "rng")  # fmt: skip


class CheckpointError(UserError):
    """A checkpoint that cannot be used to continue this run."""


def capture(trainer: Trainer, history: list[EpochMetrics], best: BestWeights,
            reuse: dict | None = None) -> dict:  # fmt: skip
    """The state after the last epoch in `history` (call it before the next epoch starts), every
    tensor copied to the CPU once: training may go on while it is written. `reuse`: an earlier
    state no one reads any more, whose tensors are copied into where they fit (measured: a
    third to a sixth of the CPU time of copying into new memory, bench/bench_checkpoint.py)."""
    state = {
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
    return _off_device(state, reuse)


def _off_device(value, reuse=None):
    """`value` with each tensor replaced by a copy on the CPU (a copy there too: the training
    steps change the model's and optimizer's tensors in place), into `reuse`'s tensor at the
    same place where it has the same shape, dtype and strides."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if (isinstance(reuse, torch.Tensor) and reuse.shape == value.shape
                and reuse.dtype == value.dtype and reuse.stride() == value.stride()):  # fmt: skip
            return reuse.copy_(value)
        return value.to("cpu", copy=True)
    if isinstance(value, dict):
        reuse = reuse if isinstance(reuse, dict) else {}
        return {k: _off_device(v, reuse.get(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        reuse = reuse if isinstance(reuse, type(value)) and len(reuse) == len(value) else ()
        return type(value)(_off_device(v, r) for v, r in zip(value, reuse or [None] * len(value)))
    return value


class Policy:
    """When an epoch's state is saved: every N epochs, or once the interval has passed since the
    last save (or the start), as `--checkpoint-every` says."""

    def __init__(self, every: str, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = checkpoint_interval(every), clock
        self.last = clock()

    def due(self, epoch: int) -> bool:
        if self.interval.epochs is not None:
            return epoch % self.interval.epochs == 0
        return self.clock() - self.last >= self.interval.seconds

    def saved(self) -> None:
        self.last = self.clock()


class Writer:
    """Writes checkpoints one at a time on a thread of its own; `on_written(state, path)` is
    called on that thread once a file is whole. An error in a write is raised in the caller's
    thread at its next `write` or `wait`. Use as a context manager: leaving it waits for the
    write in progress (the folder it writes to may go next)."""

    def __init__(self, on_written: Callable[[dict, Path], None]):
        self.on_written = on_written
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, state: dict, path: Path) -> None:
        """Start writing `state` (from `capture`) to `path`; waits first for a write still in
        progress (only when checkpoints are due faster than they are written)."""
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(state, path),
                                        name="checkpoint-writer", daemon=True)  # fmt: skip
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()  # a signal still reaches the main thread while it waits here
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, state: dict, path: Path) -> None:
        try:
            save(state, path)
            self.on_written(state, path)
        except BaseException as e:  # raised again in the training's thread
            self._error = e

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def save(state: dict, path: Path) -> Path:
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def load(path: Path, name: str = "") -> dict:
    """The state in `path`; errors call it `name` (where it came from), else by its path."""
    name = name or f"checkpoint {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a foreign pickle...: all mean "not ours, or damaged"
        raise CheckpointError(
            f"{name} cannot be read ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{name} is not a cifar-mlflow checkpoint ({FORMAT})")
    missing = [k for k in FIELDS if k not in state]
    if missing:
        raise CheckpointError(
            f"{name} lacks {', '.join(missing)}: it is damaged, so the run cannot "
            "continue from it; start a new run"
        )
    return state


def check_matches(state: dict, config: TrainConfig, device: torch.device) -> None:
    """A run continues with the settings it started with; anything else would be a different
    experiment under the same run id."""
    saved = state["config"]
    # When to save changes nothing learnt; a setting newer than the checkpoint is no change.
    changed = [k for k, v in config.as_params().items()
               if k in saved and k != "checkpoint_every" and saved[k] != v]  # fmt: skip
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
    if trainer.device.type == "cuda":  # the training device's own, whichever index it has here
        states["cuda_device"] = torch.cuda.get_rng_state(trainer.device)
    return states


def _set_rng_states(trainer: Trainer, states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    trainer.train_batches.generator.set_state(states["batches"])
    if trainer.device.type == "cuda":
        state = training_device_cuda_state(states)
        if state is not None:
            torch.cuda.set_rng_state(state, trainer.device)


def training_device_cuda_state(states: dict) -> torch.Tensor | None:
    """The CUDA generator state of the device a checkpoint trained on. Checkpoints from before
    `cuda_device` hold every visible GPU's, by position: a run trains on the first device it
    sees (`--device cuda` is cuda:0; a Ray trial sees only its own GPU), so that one is taken."""
    if "cuda_device" in states:
        return states["cuda_device"]
    saved = states.get("cuda")
    return saved[0] if saved else None
