"""A run's checkpoints and epoch metrics on the tracking server: sent by a background thread, so
training goes on while the server is down, and read back to resume, so nothing is lost or doubled.

The rules that make a resumed run's metric history hold each epoch exactly once:
  * epoch k's metrics are sent only once a checkpoint of epoch k or later is on the server, so a
    resume (which continues after the last checkpoint) never trains an epoch already logged;
  * a resume re-sends from the checkpoint's own history the epochs the server lacks (a process can
    die between sending a checkpoint and its metrics);
  * metrics keep the timestamp of their first sending: when a reply is lost and a batch is sent
    again, MLflow's database store sees rows it already has (same key, step, value, timestamp)
    and skips them.
Checkpoints alternate between two artifact slots and the `checkpoint_artifact` tag moves only
after an upload has finished, so a process killed mid-upload leaves the previous checkpoint
usable: the artifact store's version of "write to a temporary file, then rename". While the
server is down only the newest checkpoint waits to be sent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from ..core.engine import EpochMetrics
from .connection import TrackingError, tracking_uri
from .runs import get_run

CHECKPOINT_TAG = "checkpoint_artifact"  # artifact path of the run's last complete checkpoint
CHECKPOINT_EPOCH_TAG = "checkpoint_epoch"
RESUMED_TAG = "resumed_after_epoch"
SLOTS = ("resume/slot-0", "resume/slot-1")
CHECKPOINT_FILE = "checkpoint.pt"
RETRY_DELAYS = (1, 2, 4, 8, 15)  # seconds between tries while the server is down; then every 15 s
# After the last epoch, wait this long for a server that is down (a restart takes ~20 s); after a
# failure or a signal, promptness matters more.
DRAIN_AFTER_TRAINING_SECONDS = 600
DRAIN_AFTER_FAILURE_SECONDS = 15

_log = logging.getLogger(__name__)


class ServerGone(TrackingError):
    """Training ended but the tracking server did not come back to take its results."""


@dataclass(frozen=True)
class _Checkpoint:
    epoch: int
    path: Path


class Outbox:
    """Sends, in order, each epoch's checkpoint file and metrics to `run_id`, retrying until the
    server takes them. Use as a context manager: leaving it waits for everything to be sent."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = MlflowClient()
        current = get_run(run_id).data.tags.get(CHECKPOINT_TAG, "")
        self._slot = SLOTS[1] if current.startswith(SLOTS[0]) else SLOTS[0]
        self._lock = threading.Condition()
        self._checkpoint: _Checkpoint | None = None  # newest not yet on the server
        self._sending: _Checkpoint | None = None
        self._metrics: list[list[Metric]] = []  # one list per epoch, oldest first
        self._closing = self._abandoned = False
        self._thread = threading.Thread(target=self._send_forever, name="outbox", daemon=True)
        self._thread.start()

    def put(self, epoch: int, checkpoint: Path, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        with self._lock:
            stale, self._checkpoint = self._checkpoint, _Checkpoint(epoch, checkpoint)
            self._metrics.append([Metric(k, v, timestamp, epoch) for k, v in metrics.items()])
            if stale is not None and stale is not self._sending:
                stale.path.unlink(missing_ok=True)
            self._lock.notify_all()

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for everything to be sent; False if some was not."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            sent = self._lock.wait_for(self._all_sent, timeout)
            self._abandoned = not sent
            self._lock.notify_all()
        return sent

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self.close(DRAIN_AFTER_TRAINING_SECONDS):
                raise ServerGone(
                    f"the tracking server {tracking_uri()} has not answered for "
                    f"{DRAIN_AFTER_TRAINING_SECONDS} s: epochs {self._unsent_epochs()} of run "
                    f"{self.run_id} are not recorded; once it is back, run "
                    f"`cifar-mlflow train --resume {self.run_id}`"
                )
        elif not self.close(DRAIN_AFTER_FAILURE_SECONDS):
            _log.warning("epochs %s were not sent to the tracking server", self._unsent_epochs())

    def _all_sent(self) -> bool:
        return self._checkpoint is None and not self._metrics

    def _unsent_epochs(self) -> str:
        with self._lock:
            epochs = [batch[0].step for batch in self._metrics if batch]
        return ", ".join(map(str, epochs)) or "none"

    def _send_forever(self) -> None:
        failures = 0
        while True:
            with self._lock:
                self._lock.wait_for(lambda: not self._all_sent() or self._closing)
                if self._all_sent() or self._abandoned:
                    return
                self._sending, metrics = self._checkpoint, list(self._metrics)
            try:
                self._send(self._sending, metrics)
            except Exception as e:  # the server is down, restarting, overloaded...
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                if failures == 0:
                    _log.warning(
                        "tracking server unreachable (%s); training goes on, its results are "
                        "kept and sent when the server is back",
                        type(e).__name__,
                    )
                failures += 1
                with self._lock:
                    if self._sending is not None and self._sending is not self._checkpoint:
                        self._sending.path.unlink(missing_ok=True)  # a newer one replaced it
                    self._sending = None
                    self._lock.wait_for(lambda: self._abandoned, delay)
                continue
            if failures:
                _log.warning("tracking server is back: queued results sent")
            failures = 0

    def _send(self, checkpoint: _Checkpoint | None, metrics: list[list[Metric]]) -> None:
        """Everything in `metrics` belongs to `checkpoint`'s epoch or earlier (put() adds both
        at once), so sending the checkpoint first keeps the order rule."""
        if checkpoint is not None:
            self.client.log_artifact(self.run_id, str(checkpoint.path), self._slot)
            artifact = f"{self._slot}/{checkpoint.path.name}"
            self.client.log_batch(
                self.run_id,
                tags=[
                    RunTag(CHECKPOINT_TAG, artifact),
                    RunTag(CHECKPOINT_EPOCH_TAG, str(checkpoint.epoch)),
                ],
            )
            self._slot = SLOTS[1] if self._slot == SLOTS[0] else SLOTS[0]
            with self._lock:
                if self._checkpoint is checkpoint:
                    self._checkpoint = None
                self._sending = None
                checkpoint.path.unlink(missing_ok=True)
                self._lock.notify_all()
        for batch in metrics:
            self.client.log_batch(self.run_id, metrics=batch)
            with self._lock:
                self._metrics = [b for b in self._metrics if b is not batch]
                self._lock.notify_all()


def download_last_checkpoint(run_id: str, dest: Path) -> Path | None:
    """The run's last complete checkpoint, downloaded into `dest`; None if it has none yet."""
    run = get_run(run_id)
    if run.info.status == "FINISHED":
        raise TrackingError(f"run {run_id} has already finished: there is nothing to resume")
    artifact = run.data.tags.get(CHECKPOINT_TAG)
    if artifact is None:
        return None
    return Path(MlflowClient().download_artifacts(run_id, artifact, str(dest)))


def log_missing_epochs(run_id: str, history: list[EpochMetrics]) -> None:
    """Send the epochs of a resumed run's checkpoint that the server lacks, and mark it resumed."""
    client = MlflowClient()
    timestamp = int(time.time() * 1000)
    missing = []
    for key in sorted({k for m in history for k in m.as_metrics()}):
        logged = {m.step for m in client.get_metric_history(run_id, key)}
        missing += [
            Metric(key, m.as_metrics()[key], timestamp, m.epoch)
            for m in history
            if key in m.as_metrics() and m.epoch not in logged
        ]
    tags = [RunTag(RESUMED_TAG, str(history[-1].epoch))]
    client.log_batch(run_id, metrics=missing, tags=tags)
