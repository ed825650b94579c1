"""One tracked training run: load the data, train, and record it all in MLflow.

Order matters for failures: the config is validated by the CLI, then the tracking server and the
data are checked, and only then is a run opened, so bad input never leaves a run behind.

Crash safety (docs/reliability.md): after every epoch the whole training state is saved and
handed to the outbox, which sends it with the epoch's metrics; a resumed run (`resume`, or the
run `mlflow run` relaunches) restores the last checkpoint and trains only the epochs after it.
SIGINT and SIGTERM stop the run after the current training step and mark it KILLED.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from . import checkpoint, tracking
from .config import TrainConfig
from .data import MEAN, STD, as_model_input, load_cifar10
from .engine import BatchWrapper, EpochMetrics, Trainer, forward_flops, resolve_device
from .errors import UserError
from .models import Normalized
from .outbox import CHECKPOINT_FILE, Outbox, download_last_checkpoint, log_missing_epochs


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run; it is marked KILLED and can be resumed from
    `epochs_done` (0: no checkpoint yet)."""

    def __init__(self, signum: int, run_id: str | None, epochs_done: int):
        self.signum, self.run_id, self.epochs_done = signum, run_id, epochs_done
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopOnSignal:
    """Turns SIGINT and SIGTERM into Interrupted. During the training steps the current step is
    finished first (the loop looks at a flag between steps: no device sync, no cost); elsewhere
    (loading data, evaluating, logging) the run stops at once. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.run_id: str | None = None
        self.epochs_done = 0
        self._received: int | None = None
        self._in_steps = False
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        repeated, self._received = self._received is not None, signum
        if repeated or not self._in_steps:
            raise Interrupted(signum, self.run_id, self.epochs_done)

    def steps(self, batches: Iterable) -> Iterator:
        self._in_steps = True
        try:
            for batch in batches:
                yield batch  # the training step runs here
                if self._received is not None:
                    raise Interrupted(self._received, self.run_id, self.epochs_done)
        finally:
            self._in_steps = False


def resumed_config(run_id: str) -> TrainConfig:
    """The settings a run was started with, so `--resume RUN_ID` needs no others."""
    tracking.connect()
    return tracking.logged_config(run_id)


def run_training(
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    wrap: BatchWrapper | None = None,
    on_start: Callable[[str, dict], None] = lambda run_id, facts: None,
    resume: str | None = None,
) -> str:
    """Train as `config` says and return the MLflow run id. With `resume` (a run id), or when
    `mlflow run` relaunches a run (MLFLOW_RUN_ID) that has a checkpoint, continue that run after
    its last checkpoint instead of starting over."""
    with StopOnSignal() as stop, tempfile.TemporaryDirectory(prefix="cifar-mlflow-") as tmp:
        workdir = Path(tmp)
        device = resolve_device(config.device)
        tracking.connect()
        run_id = _run_to_continue(resume)
        state = (
            _saved_state(run_id, resume is not None, config, device, workdir) if run_id else None
        )
        data = load_cifar10(
            config.data_dir, config.train_limit, config.test_limit, config.val_size, config.seed
        )
        with tracking.training_run(config, run_id) as run:
            run_id = stop.run_id = run.info.run_id
            trainer = Trainer(config, data, device)
            done = checkpoint.restore(trainer, state) if state else []
            stop.epochs_done = len(done)
            facts = {
                "device": str(device),
                "precision_used": trainer.precision,
                "data_source": data.source,
                "train_images": len(data.train),
                "val_images": len(data.val) if data.val else 0,
                "test_images": len(data.test),
                "model_params": trainer.num_parameters,
                "model_flops": forward_flops(trainer.model, device),
            }
            if done:
                log_missing_epochs(run_id, done)
            else:
                tracking.log_setup(config, facts)
            on_start(run_id, facts)

            with Outbox(run_id) as outbox:

                def record(metrics: EpochMetrics) -> None:
                    done.append(metrics)
                    path = workdir / f"epoch-{metrics.epoch}" / CHECKPOINT_FILE
                    checkpoint.save(checkpoint.capture(trainer, done), path)
                    outbox.put(metrics.epoch, path, metrics.as_metrics())
                    stop.epochs_done = metrics.epoch
                    on_epoch(metrics)

                def steps(batches, epoch: int) -> Iterable:
                    return stop.steps(wrap(batches, epoch) if wrap else batches)

                result = trainer.fit(record, steps, done)
            tracking.log_summary(result.history)
            tracking.log_trained_model(
                Normalized(result.model, MEAN, STD), as_model_input(data.test.images[:2])
            )
            return run_id


def _run_to_continue(resume: str | None) -> str | None:
    launched = tracking.launched_run_id()
    if resume and launched and resume != launched:
        raise UserError(
            f"--resume {resume} conflicts with MLFLOW_RUN_ID={launched}: give one run to continue"
        )
    return resume or launched


def _saved_state(
    run_id: str, required: bool, config: TrainConfig, device: torch.device, workdir: Path
) -> dict | None:
    path = download_last_checkpoint(run_id, workdir)
    if path is None:
        if required:
            raise UserError(
                f"run {run_id} has no checkpoint: it stopped during its first epoch; start a "
                "new run instead"
            )
        return None  # a run that `mlflow run` has just created
    state = checkpoint.load(path)
    checkpoint.check_matches(state, config, device)
    path.unlink()
    return state
