"""A run's checkpoints and epoch metrics on the tracking server: sent by a background thread, so
training goes on while the server is down, and read back to resume, so nothing is lost or doubled.

The rules that make a resumed run's metric history hold each epoch exactly once:
  * an epoch's metrics are sent as soon as it ends, checkpoint or not (checkpoints follow
    `--checkpoint-every`); a resume trains again the epochs after its checkpoint, and what the
    server already holds of them is not sent again (`logged_steps`; on a CPU the values are
    bitwise the same);
  * a resume re-sends from the checkpoint's own history the epochs the server lacks (a process can
    die between sending a checkpoint and its metrics);
  * metrics keep the timestamp of their first sending: when a reply is lost and a batch is sent
    again, MLflow's database store sees rows it already has (same key, step, value, timestamp)
    and skips them.
Checkpoints alternate between two artifact slots and the `checkpoint_artifact` tag moves only
after an upload has finished, so a process killed mid-upload leaves the previous checkpoint
usable: the artifact store's version of "write to a temporary file, then rename". While the
server is down only the newest checkpoint waits to be sent.

Only what can succeed later is retried (no answer, 5xx, 429: connection.is_permanent). A refusal
for good (a 4xx: the run deleted in the UI, no permission, a refused payload) stops sending at
once; the newest checkpoint is moved to KEPT_CHECKPOINTS/<run_id>/ so nothing trained is lost,
and the refusal is raised in the training at its next step (`guard`), epoch (`put`) or drain.
An error of this process (`is_local`: a checkpoint that cannot be read, a disk error, a bug) is
no outage either: it stops the training the same way at once, as `LocalFailure`, with its own
words, rather than retried for minutes and reported as the server being gone.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from .connection import RunRefused, TrackingError, http_status, is_permanent, tracking_uri
from .runs import get_run

CHECKPOINT_TAG = "checkpoint_artifact"  # artifact path of the run's last complete checkpoint
CHECKPOINT_EPOCH_TAG = "checkpoint_epoch"
RESUMED_TAG = "resumed_after_epoch"
RESUME_FOLDER = "resume"
SLOTS = (f"{RESUME_FOLDER}/slot-0", f"{RESUME_FOLDER}/slot-1")
CHECKPOINT_FILE = "checkpoint.pt"
RETRY_DELAYS = (1, 2, 4, 8, 15)  # seconds between tries while the server is down; then every 15 s
# After the last epoch, wait this long for a server that is down (a restart takes ~20 s); after a
# failure or a signal, promptness matters more.
DRAIN_AFTER_TRAINING_SECONDS = 600
DRAIN_AFTER_FAILURE_SECONDS = 15
# Where a run's newest checkpoint is kept when the server refuses it for good (relative to the
# working directory, like the sweeps' and compare's outputs).
KEPT_CHECKPOINTS = Path("outputs/checkpoints")

if TYPE_CHECKING:  # core.engine imports torch, which sending results does not need
    from ..core.engine import EpochMetrics

_log = logging.getLogger(__name__)


class ServerGone(TrackingError):
    """Training ended but the tracking server did not come back to take its results."""


class LocalFailure(TrackingError):
    """Sending a run's results failed in this process, not on the way to the server or in it:
    no retry can help, so the training stops (the original error is its __cause__)."""


# What a failure on the way to the server, or in it, raises: MLflow's REST errors (no answer
# comes as one too), requests' (which wraps urllib3's), http.client's, and the OS's network
# errors (a refused or reset connection, a timeout, a name that does not resolve). Every other
# error is this process's own.
NETWORK_ERRORS = (MlflowException, requests.RequestException, http.client.HTTPException,
                  ConnectionError, TimeoutError, socket.gaierror, socket.herror)  # fmt: skip


def is_local(error: BaseException) -> bool:
    """An error of this process that no retry can change: a file it cannot read or write (a
    disk error), a bug; not one of the server or of the way to it (NETWORK_ERRORS)."""
    return not isinstance(error, NETWORK_ERRORS)


@dataclass(frozen=True)
class _Checkpoint:
    epoch: int
    path: Path


class Outbox:
    """Sends, in order, each epoch's checkpoint file and metrics to `run_id`, retrying until the
    server takes them. Use as a context manager: leaving it waits for everything to be sent."""

    def __init__(self, run_id: str, logged: frozenset[tuple[str, int]] = frozenset()):
        self.run_id = run_id
        self.logged = logged  # (key, epoch) the server holds already: a resumed run's
        self.client = MlflowClient()
        current = get_run(run_id).data.tags.get(CHECKPOINT_TAG, "")
        self._slot = SLOTS[1] if current.startswith(SLOTS[0]) else SLOTS[0]
        self._lock = threading.Condition()
        self._checkpoint: _Checkpoint | None = None  # newest not yet on the server
        self._sending: _Checkpoint | None = None
        self._metrics: list[list[Metric]] = []  # one list per epoch, oldest first
        self._closing = self._abandoned = False
        self._refused_by: Exception | None = None  # the server's answer, when it refuses for good
        self._unmarkable: str | None = None  # why the run cannot be marked FAILED either
        self._refusal: RunRefused | None = None  # the error the training raises for it
        self._failure: LocalFailure | None = None  # an error of this process, raised the same way
        self._sent_epoch = 0  # the epoch of the last checkpoint the server took
        self._thread = threading.Thread(target=self._send_forever, name="outbox", daemon=True)
        self._thread.start()

    def put(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queue an epoch's metrics (those the server lacks); raises RunRefused once the server
        has refused the run."""
        timestamp = int(time.time() * 1000)
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._refusal is not None:
                raise self._refusal
            batch = [Metric(k, v, timestamp, epoch) for k, v in metrics.items()
                     if (k, epoch) not in self.logged]  # fmt: skip
            if batch:
                self._metrics.append(batch)
            self._lock.notify_all()

    def put_checkpoint(self, epoch: int, checkpoint: Path) -> None:
        """Queue an epoch's checkpoint file, replacing one not yet sent; called from any thread.
        Once the server has refused the run, the file is kept as the newest instead (the
        training raises the refusal at its next step)."""
        with self._lock:
            if self._refusal is not None:
                # The training may have raised the refusal already: its message must say where
                # this newer checkpoint is kept.
                self._refusal.args = self._refused(_Checkpoint(epoch, checkpoint)).args
                return
            stale, self._checkpoint = self._checkpoint, _Checkpoint(epoch, checkpoint)
            if stale is not None and stale is not self._sending:
                stale.path.unlink(missing_ok=True)
            self._lock.notify_all()

    def raise_refusal(self) -> None:
        """Raise RunRefused if the server has refused the run."""
        if self._refusal is not None:
            raise self._refusal

    def guard(self, steps: Iterable) -> Iterator:
        """`steps` (an epoch's training steps), stopped by RunRefused at the first step after the
        server refused the run: a refusal ends training within a step, not an epoch. Reading
        one attribute per step costs nothing."""
        for step in steps:
            if self._refusal is not None:
                raise self._refusal
            if self._failure is not None:
                raise self._failure
            yield step

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for everything to be sent; False if some was not (at once
        when the server has refused the run)."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            self._lock.wait_for(lambda: self._all_sent() or self._stopped(), timeout)
            sent = self._all_sent() and not self._stopped()
            self._abandoned = not sent
            self._lock.notify_all()
        return sent

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self.close(DRAIN_AFTER_TRAINING_SECONDS):
                if self._failure is not None:
                    raise self._failure
                if self._refusal is not None:
                    raise self._refusal
                raise ServerGone(
                    f"the tracking server {tracking_uri()} has not answered for "
                    f"{DRAIN_AFTER_TRAINING_SECONDS} s: epochs {self._unsent_epochs()} of run "
                    f"{self.run_id} are not recorded; once it is back, run "
                    f"`cifar-mlflow train --resume {self.run_id}`"
                )
        elif not self.close(DRAIN_AFTER_FAILURE_SECONDS) and not self._stopped():
            _log.warning("epochs %s were not sent to the tracking server", self._unsent_epochs())

    def _stopped(self) -> bool:
        """Sending stopped for good: the server refused the run, or this process failed."""
        return self._refusal is not None or self._failure is not None

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
            except Exception as e:  # the server is down, restarting, overloaded... or refuses
                if is_permanent(e):
                    self._refuse(e)
                    return
                if is_local(e):
                    self._fail(e)
                    return
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

    def _refuse(self, error: Exception) -> None:
        """Stop for good: keep the newest checkpoint on disk, and make the refusal the
        training's error."""
        unmarkable = self._why_unmarkable()
        with self._lock:
            self._refused_by, self._unmarkable = error, unmarkable
            newest = self._checkpoint or self._sending
            self._checkpoint = self._sending = None
            self._refusal = self._refused(newest)
            self._lock.notify_all()

    def _fail(self, error: Exception) -> None:
        """Stop for good on an error of this process: keep the newest checkpoint if it can be,
        and make the error, in its own words, the training's."""
        with self._lock:
            newest = self._checkpoint or self._sending
            self._checkpoint = self._sending = None
            said = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            failure = LocalFailure(
                f"recording run {self.run_id}'s results failed in this process, not on the "
                f"tracking server: {type(error).__name__}{': ' + said if said else ''}; no retry "
                f"can change that, so training stopped; {self._keep(newest)}"
            )
            failure.__cause__ = error
            self._failure = failure
            self._lock.notify_all()

    def _refused(self, newest: _Checkpoint | None) -> RunRefused:
        """The one-line error: what the server refused, whether the run still exists, and where
        the training's progress is. `newest` (a checkpoint not on the server) is kept."""
        error = self._refused_by
        code = getattr(error, "error_code", None) or f"HTTP {http_status(error)}"
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        said = said.removeprefix(f"{code}: ")[:300]
        fate = (
            f"{self._unmarkable}, so it cannot be marked FAILED either"
            if self._unmarkable
            else "no retry can change that, so training stopped"
        )
        refusal = RunRefused(
            f"the tracking server {tracking_uri()} refused run {self.run_id}'s results ({code}: "
            f"{said}): {fate}; {self._keep(newest)}",
            unmarkable=self._unmarkable is not None,
        )
        refusal.__cause__ = error
        return refusal

    def _keep(self, newest: _Checkpoint | None) -> str:
        """Move `newest` (not on the server) out of the temporary folder that ends with the
        process; say where the training's progress is."""
        if newest is None:
            return (
                f"nothing trained is lost: the checkpoint of epoch {self._sent_epoch} is on the run"
            )
        kept = (KEPT_CHECKPOINTS / self.run_id / CHECKPOINT_FILE).resolve()
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(newest.path, kept)
        except OSError as e:
            return f"the checkpoint of epoch {newest.epoch} could not be kept in {kept} ({e})"
        return f"nothing trained is lost: the checkpoint of epoch {newest.epoch} is kept in {kept}"

    def _why_unmarkable(self) -> str | None:
        """Why the run cannot be marked FAILED after the refusal, or None if it can."""
        try:
            stage = self.client.get_run(self.run_id).info.lifecycle_stage
        except Exception:  # gone for good, or no permission to read it any more
            return "the server no longer lets this process read the run"
        if stage == "deleted":
            return (
                f"the run is deleted on the server (`mlflow runs restore --run-id {self.run_id}` "
                "brings it back)"
            )
        return None

    def _send(self, checkpoint: _Checkpoint | None, metrics: list[list[Metric]]) -> None:
        """Metrics first: they are small, and what the MLflow UI shows while a run trains."""
        for batch in metrics:
            self.client.log_batch(self.run_id, metrics=batch)
            with self._lock:
                self._metrics = [b for b in self._metrics if b is not batch]
                self._lock.notify_all()
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
            self._sent_epoch = checkpoint.epoch
            with self._lock:
                if self._checkpoint is checkpoint:
                    self._checkpoint = None
                self._sending = None
                checkpoint.path.unlink(missing_ok=True)
                self._lock.notify_all()


def download_last_checkpoint(run_id: str, dest: Path) -> Path | None:
    """The run's last complete checkpoint, downloaded into `dest`; None if it has none yet."""
    run = get_run(run_id)
    if run.info.status == "FINISHED":
        raise TrackingError(f"run {run_id} has already finished: there is nothing to resume")
    artifact = run.data.tags.get(CHECKPOINT_TAG)
    if artifact is None:
        return None
    try:
        return Path(MlflowClient().download_artifacts(run_id, artifact, str(dest)))
    except (MlflowException, OSError) as e:  # deleted from the artifact store, or unreachable
        said = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"run {run_id}'s checkpoint {artifact} cannot be fetched from its artifact store "
            f"({said}): if the store is reachable, the file is gone and the run cannot continue; "
            "start a new run"
        ) from None


def logged_steps(run_id: str, keys: Iterable[str]) -> frozenset[tuple[str, int]]:
    """(key, step) of each of `keys`' values the run holds already."""
    client = MlflowClient()
    return frozenset((key, m.step) for key in keys for m in client.get_metric_history(run_id, key))


def log_missing_epochs(
    run_id: str, history: list[EpochMetrics], logged: frozenset[tuple[str, int]]
) -> None:
    """Send the epochs of a resumed run's checkpoint that the server lacks (`logged`: what it
    holds), and mark it resumed."""
    timestamp = int(time.time() * 1000)
    missing = [
        Metric(key, value, timestamp, m.epoch)
        for m in history
        for key, value in sorted(m.as_metrics().items())
        if (key, m.epoch) not in logged
    ]
    tags = [RunTag(RESUMED_TAG, str(history[-1].epoch))]
    MlflowClient().log_batch(run_id, metrics=missing, tags=tags)


def remove_checkpoints(run_id: str) -> None:
    """Delete a finished run's resume checkpoints from its artifacts (its LoggedModels stay):
    no one resumes a FINISHED run. MLflow's client has no call for it; the run's artifact
    repository does (on a server, through its artifact proxy)."""
    artifact_uri = get_run(run_id).info.artifact_uri
    get_artifact_repository(artifact_uri).delete_artifacts(RESUME_FOLDER)
