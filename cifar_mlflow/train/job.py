"""One tracked training run: load the data, train, and record it all in MLflow.

Order matters for failures: the config is validated by the CLI, then the tracking server and the
data are checked, and only then is a run opened, so bad input never leaves a run behind.

Crash safety (docs/reliability.md): after every epoch its metrics go to the outbox, and the
training state is copied off the device; as `--checkpoint-every` says, after the last epoch and
when a signal stops the run, that state is written in the background and handed to the outbox
too. A resumed run (`resume`, or the run `mlflow run` relaunches) restores the last checkpoint
and trains only the epochs after it. SIGINT and SIGTERM stop the run after the current training
step and mark it KILLED. A FINISHED run's checkpoints are removed from the server.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import checkpoint
from ..core.config import TrainConfig, batch_size_used
from ..core.data import MEAN, STD, Cifar10, as_model_input, load_cifar10
from ..core.engine import (
    BatchWrapper,
    EpochMetrics,
    Trainer,
    TrainResult,
    forward_flops,
    resolve_device,
    resolve_precision,
)
from ..core.errors import UserError
from ..core.models import Normalized
from ..core.selection import BestWeights
from ..core.signals import Interrupted, StopOnSignal
from ..tracking import connection, records, training
from ..tracking.datasets import data_changes, log_inputs, run_datasets, split_digest
from ..tracking.lease import WriterLease
from ..tracking.models import log_checkpoint
from ..tracking.outbox import (
    CHECKPOINT_FILE,
    CHECKPOINT_TAG,
    Outbox,
    download_last_checkpoint,
    log_missing_epochs,
    logged_steps,
    remove_checkpoints,
)
from ..tracking.predictions import Predictions, log_predictions
from ..tracking.runs import (
    FINISHED,
    check_experiment,
    get_run,
    launched_run_id,
    stale_launched_run,
    tracked_run,
    ui_url,
)
from .events import runs_per_device
from .summary import Summary, curves_figure

CURVES_FIGURE = "curves.png"  # the run's artifact: its loss and accuracy per epoch
EPOCH_KEYS = tuple(f.name for f in dataclasses.fields(EpochMetrics) if f.name != "epoch")

_log = logging.getLogger(__name__)


def resumed_config(run_id: str) -> TrainConfig:
    """The settings a run was started with, so `--resume RUN_ID` needs no others."""
    connection.connect()
    return training.logged_config(run_id)


def run_training(
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    wrap: BatchWrapper | None = None,
    on_start: Callable[[str, dict], None] = lambda run_id, facts: None,
    on_end: Callable[[Summary, str | None], None] = lambda summary, url: None,
    resume: str | None = None,
    tags: dict[str, str] | None = None,
    log_models: bool = True,
    name: str | None = None,
) -> str:
    """Train as `config` says and return the MLflow run id.

    With `resume` (a run id), or when `mlflow run` relaunches a run (MLFLOW_RUN_ID) that has a
    checkpoint, continue that run after its last checkpoint instead of starting over. `tags` go
    on the run beside its own (a parent run's id, say); `name` names a new run (default: its
    configuration). `on_epoch` may raise core.engine.StopTraining to end training early: the
    run then ends FINISHED, tagged `stopped_early` with the reason. `on_end` hears how the
    finished run did and where it opens in the MLflow UI (None without a tracking server).
    `log_models=False` skips the `best` and `final` LoggedModels: a tune's trials only rank
    settings (measured: logging the two costs ~5 s per run here, bench/bench_model_logging.py).
    """
    with (
        StopOnSignal() as stop,
        tempfile.TemporaryDirectory(prefix="cifar-mlflow-") as tmp,
        WriterLease() as lease,
    ):
        start = _prepare(config, resume, Path(tmp), lease)
        recorder = EpochRecorder(Path(tmp), on_epoch, config.checkpoint_every,
                                 saved=start.epochs_done)  # fmt: skip

        def steps(batches, epoch: int) -> Iterable:
            batches = stop.steps(wrap(batches, epoch) if wrap else batches)
            return lease.guard(recorder.outbox.guard(batches))

        opened = None
        try:
            with tracked_run(training.training_run(config, start.run_id, tags, name)) as opened:
                lease.take(opened)  # a new run's; a continued run's is taken before its state
                trainer = Trainer(config, start.data, start.device)
                done, best = [], BestWeights()
                if start.state:
                    done, best = checkpoint.restore(trainer, start.state)
                # A continued run may hold metrics of epochs after its checkpoint: kept, not resent.
                logged = logged_steps(opened, EPOCH_KEYS) if start.run_id else frozenset()
                facts = _record_start(opened, trainer, start.data, done, logged, on_start)
                with (Outbox(opened, logged) as outbox,
                      checkpoint.Writer(recorder.written) as writer):  # fmt: skip
                    recorder.start(trainer, done, best, outbox, writer)
                    try:
                        result = trainer.fit(recorder, steps, done)
                    except Interrupted:
                        recorder.finish()  # the last epoch's state, to resume from
                        raise
                    recorder.finish()
                training.log_summary_metrics(result.history, result.stopped_early, len(done))
                run = get_run(opened)
                summary = Summary(opened, run.info.run_name, config, facts, result.history,
                                  result.stopped_early)  # fmt: skip
                records.set_description(opened, summary.markdown())
                records.log_figure(opened, curves_figure(summary), CURVES_FIGURE)
                digests = {"test": split_digest(start.data.test),
                           "val": start.data.val and split_digest(start.data.val)}  # fmt: skip
                _log_predictions(trainer, recorder, start.data, digests)
                if log_models:
                    _log_checkpoints(result, recorder.best, start.data, digests)
        except Interrupted as e:
            if opened:
                e.add_note(_resume_hint(opened, recorder.saved))
            raise
        _remove_checkpoints(opened)
        on_end(summary, ui_url(run.info.experiment_id, opened))
        return opened


def _remove_checkpoints(run_id: str) -> None:
    """A FINISHED run is never resumed: its checkpoints only cost space. Failing to remove them
    does not fail the run."""
    try:
        remove_checkpoints(run_id)
    except Exception as e:
        _log.warning("run %s's resume checkpoints stay on the server (%s: %s)", run_id,
                     type(e).__name__, str(e).splitlines()[0] if str(e) else "")  # fmt: skip


@dataclass(frozen=True)
class Start:
    """What a training starts from, all checked before a run is opened (so bad input never
    leaves a run behind): the device, the run to continue and its saved state, the data."""

    device: torch.device
    run_id: str | None  # a run to continue (resumed, or made by `mlflow run`); None: a new one
    state: dict | None  # the continued run's last checkpoint
    data: Cifar10

    @property
    def epochs_done(self) -> int:
        return self.state["epoch"] if self.state else 0


def _prepare(
    config: TrainConfig, resume: str | None, workdir: Path, lease: WriterLease
) -> Start:
    device = resolve_device(config.device)
    resolve_precision(config.precision, device)  # bf16 on a GPU without it: refused here
    connection.connect()
    run_id = _run_to_continue(resume)
    if run_id:
        lease.take(run_id)  # before its state is read: from here on no other process writes it
    else:
        check_experiment(config.experiment)
    state = _saved_state(run_id, resume is not None, config, device, workdir) if run_id else None
    data = load_cifar10(
        config.data_dir, config.train_limit, config.test_limit, config.val_size, config.seed
    )
    if state:
        changed = data_changes(get_run(run_id), data)
        if changed:
            raise UserError(
                f"the data changed since run {run_id} was trained: {changed}; a run continues "
                f"on the data it started on: give that data to --data-dir ({config.data_dir} "
                "now), or train a new run on this data (the same options, without --resume)"
            )
    return Start(device, run_id, state, data)


def _record_start(run_id: str, trainer: Trainer, data: Cifar10, done: list[EpochMetrics],
                  logged: frozenset[tuple[str, int]],
                  on_start: Callable[[str, dict], None]) -> dict[str, object]:  # fmt: skip
    """The run's facts and data inputs (a resumed run has them; it gets the epochs its checkpoint
    holds that the server lacks), then tell the caller; returns the facts."""
    facts = _facts(trainer, data)
    if done:
        log_missing_epochs(run_id, done, logged)
    else:
        training.log_facts(facts)
        log_inputs(run_datasets(data))
    on_start(run_id, facts)
    return facts


class EpochRecorder:
    """What happens after each epoch: its metrics go to the outbox, the training state is copied
    off the device and, when the policy says so, written in the background and handed to the
    outbox; then the caller is told. `finish` writes the last epoch's state if it is not yet."""

    def __init__(self, workdir: Path, on_epoch: Callable[[EpochMetrics], None],
                 checkpoint_every: str, saved: int):  # fmt: skip
        self.workdir, self.on_epoch = workdir, on_epoch
        self.policy = checkpoint.Policy(checkpoint_every)
        self.saved = saved  # the last epoch whose checkpoint is written (0: none yet)
        self.latest: dict | None = None  # the last epoch's state, off the device
        self.spare: dict | None = None  # a state written already: its memory is copied into
        # (epoch, the trainer's predicted classes) of the last and the best epoch evaluated in
        # this process: the predictions logged at the end, without evaluating again.
        self.predicted_last = self.predicted_at_best = (0, {})

    def start(self, trainer: Trainer, done: list[EpochMetrics], best: BestWeights,
              outbox: Outbox, writer: checkpoint.Writer) -> None:  # fmt: skip
        self.trainer, self.history, self.best = trainer, list(done), best
        self.outbox, self.writer = outbox, writer

    def __call__(self, metrics: EpochMetrics) -> None:
        self.history.append(metrics)
        self.predicted_last = (metrics.epoch, self.trainer.predicted)
        if self.best.offer(metrics.epoch, metrics.val_acc, self.trainer.model):
            self.predicted_at_best = self.predicted_last
        reuse, self.spare = self.latest or self.spare, None
        self.latest = checkpoint.capture(self.trainer, self.history, self.best, reuse)
        self.outbox.put(metrics.epoch, metrics.as_metrics())
        if self.policy.due(metrics.epoch):
            self._write()
        self.on_epoch(metrics)

    def finish(self) -> None:
        """Write the last epoch's state unless it is written, and wait for the writes."""
        if self.latest is not None:
            self._write()
        self.writer.wait()
        self.outbox.raise_refusal()

    def _write(self) -> None:
        path = self.workdir / f"epoch-{self.latest['epoch']}" / CHECKPOINT_FILE
        self.writer.write(self.latest, path)  # a signal while it waits leaves `latest` to finish
        self.latest = None
        self.policy.saved()

    def written(self, state: dict, path: Path) -> None:
        """On the writer's thread: `state`'s file is whole."""
        self.saved, self.spare = state["epoch"], state
        self.outbox.put_checkpoint(state["epoch"], path)


def _log_predictions(trainer: Trainer, recorder: EpochRecorder, data: Cifar10,
                     digests: dict[str, str | None]) -> None:  # fmt: skip
    """The predicted class of every test and validation image by `final` (the last epoch's
    weights) and, with validation, `best` (the best epoch's): the ones its evaluation counted
    when this process trained that epoch, else (an epoch trained before a resume) those of the
    weights evaluated now."""
    checkpoints = {"final": (recorder.history[-1].epoch, None)}
    if recorder.best.weights is not None:
        checkpoints["best"] = (recorder.best.epoch, recorder.best.weights)
    for name, (epoch, weights) in checkpoints.items():
        kept = [p for e, p in (recorder.predicted_last, recorder.predicted_at_best) if e == epoch]
        predicted = kept[0] if kept else trainer.predictions_of(weights)
        arrays = {}
        for split, classes in predicted.items():
            arrays |= {f"{split}_pred": classes.cpu().numpy(),
                       f"{split}_label": getattr(data, split).labels.astype(np.uint8),
                       f"{split}_digest": digests[split]}  # fmt: skip
        log_predictions(name, Predictions(**arrays))


def _log_checkpoints(result: TrainResult, best: BestWeights, data: Cifar10,
                     digests: dict[str, str | None]) -> None:  # fmt: skip
    """The run's LoggedModels: `final` (the last epoch) and, with validation, `best` (the epoch
    with the highest val_acc), in that order, so the run's model_uri tag ends on `best`. Each is
    our model behind the input normalisation, on the CPU."""
    example = as_model_input(data.test.images[:2])
    checkpoints = {"final": (result.model, result.history[-1].epoch)}
    if best.weights is not None:
        at_best = copy.deepcopy(result.model)
        at_best.load_state_dict(best.weights)
        checkpoints["best"] = (at_best, best.epoch)
    for name, (model, epoch) in checkpoints.items():
        log_checkpoint(name, Normalized(model.cpu(), MEAN, STD), epoch, data.classes, example,
                       digests)  # fmt: skip


def _facts(trainer: Trainer, data: Cifar10) -> dict[str, object]:
    """What this run is, beyond its config: where it trains, on what, and how big the model is."""
    return {
        "device_used": str(trainer.device),
        "precision_used": trainer.precision,
        "compile_used": trainer.compile_used,
        **({"compile_fallback": trainer.compile_fallback} if trainer.compile_fallback else {}),
        "runs_per_device": runs_per_device(),
        "data_source": data.source,
        "train_images": len(data.train),
        "batch_size_used": batch_size_used(trainer.config.batch_size, len(data.train)),
        "val_images": len(data.val) if data.val else 0,
        "test_images": len(data.test),
        "model_params": trainer.num_parameters,
        "model_flops": forward_flops(trainer.model, trainer.device),
    }


def _resume_hint(run_id: str, epochs_saved: int) -> str:
    if not epochs_saved:
        return "it has no checkpoint yet, so it cannot be resumed"
    return (
        f"its checkpoint holds epoch {epochs_saved}: continue it with "
        f"`cifar-mlflow train --resume {run_id}`"
    )


def _run_to_continue(resume: str | None) -> str | None:
    launched = launched_run_id()
    if resume and launched and resume != launched:
        raise UserError(
            f"--resume {resume} conflicts with MLFLOW_RUN_ID={launched}: give one run to continue"
        )
    run_id = resume or launched
    if run_id and get_run(run_id).info.status == FINISHED:
        if resume:
            raise UserError(f"run {run_id} has already finished: there is nothing to resume")
        raise UserError(stale_launched_run(run_id))
    return run_id


def _saved_state(
    run_id: str, required: bool, config: TrainConfig, device: torch.device, workdir: Path
) -> dict | None:
    path = download_last_checkpoint(run_id, workdir)
    if path is None:
        if required:
            raise UserError(
                f"run {run_id} has no checkpoint: it stopped before its first was due "
                "(--checkpoint-every); start a new run instead"
            )
        return None  # a run that `mlflow run` has just created
    artifact = get_run(run_id).data.tags.get(CHECKPOINT_TAG, CHECKPOINT_FILE)
    state = checkpoint.load(path, name=f"run {run_id}'s checkpoint {artifact}")
    checkpoint.check_matches(state, config, device)
    path.unlink()
    return state
