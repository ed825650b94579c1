"""One run, one writer: a training holds a lease on its run, so two processes that continue the
same run at once (two `--resume RUN_ID`) cannot both train into it.

MLflow has no compare-and-set on tags, but a param is set once: the store refuses a second,
different value for a key a run holds (a unique key in its database, so of two requests at the
same moment exactly one wins, on sqlite and PostgreSQL alike), and takes the same value again (a
request re-sent after a lost reply still wins). Each writer therefore claims the next generation,
param `writer.N` = "HOST pid PID since SECONDS TOKEN", and the loser of a race reads who won. The
holder refreshes the tag `writer.N.heartbeat` (unix seconds) every HEARTBEAT_SECONDS and sets it
to "released" when it is done. A holder is gone, and its lease free, when its run is no longer
RUNNING, when it released it, when its heartbeat is older than STALE_SECONDS, or at once when it
ran on this host and its pid is no longer alive (a killed run is resumed without waiting), or
is this process, which no longer holds it (its release may not have reached a server that was
down).
A holder that finds a later generation at a heartbeat (it was silent for so long that another
process took over) stops training at its next step, leaving the run to the new writer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .connection import TrackingError
from .runs import get_run, quick_exit

PARAM = "writer"  # params writer.1, writer.2, ...: one per process that has written the run
HEARTBEAT_SECONDS = 20.0
# Four missed heartbeats: a busy server or a loaded machine delays one, not four in a row.
STALE_SECONDS = 4 * HEARTBEAT_SECONDS
RELEASED = "released"
EXIT_WAIT_SECONDS = 5.0
# The claims this process holds (or is making): a claim of this very process is live only while
# it is here, even when its release never reached the server (down at the time).
_claims: set[str] = set()


class RunHeld(TrackingError):
    """Another live process holds the run's lease."""


class LeaseLost(TrackingError):
    """Another process took the run over while this one could not reach the server; the run is
    the new writer's, so this process leaves it as it is (`foreign_writer`)."""

    foreign_writer = True


@dataclass(frozen=True)
class Holder:
    generation: int
    host: str
    pid: int
    since: float
    token: str
    heartbeat: float | None  # None: none yet
    released: bool

    @classmethod
    def of(cls, run: Run) -> Holder | None:
        """The latest writer of `run`, or None if none ever claimed it."""
        claims = {}
        for key, value in run.data.params.items():
            prefix, _, number = key.partition(".")
            if prefix == PARAM and number.isdigit():
                claims[int(number)] = value
        if not claims:
            return None
        generation = max(claims)
        host, _, pid, _, since, token = (claims[generation].split() + [""] * 6)[:6]
        beat = run.data.tags.get(heartbeat_tag(generation))
        released = beat == RELEASED
        return cls(generation, host, _int(pid), _float(since), token,
                   None if released or beat is None else _float(beat), released)  # fmt: skip

    def live(self, run: Run, now: float) -> bool:
        if self.released or run.info.status != "RUNNING":
            return False
        if self.host == socket.gethostname():
            if self.pid == os.getpid():
                return self.token in _claims
            if not _pid_alive(self.pid):
                return False
        return now - max(self.since, self.heartbeat or 0.0) < STALE_SECONDS

    def describe(self, now: float) -> str:
        last = max(self.since, self.heartbeat or 0.0)
        return f"{self.host} pid {self.pid}, last heard {max(0, now - last):.0f} s ago"


def heartbeat_tag(generation: int) -> str:
    return f"{PARAM}.{generation}.heartbeat"


class WriterLease:
    """The lease this process holds on a run, from `take` until the block ends. Use as a
    context manager; `guard` stops a training's steps once the lease is lost."""

    def __init__(self):
        self.run_id: str | None = None
        self.generation = 0
        self._claim = ""
        self._stop = threading.Event()
        self._lost: LeaseLost | None = None
        self._thread: threading.Thread | None = None

    def take(self, run_id: str) -> None:
        """Claim `run_id` for this process; RunHeld (one line naming the holder) if another
        live process holds it. Nothing when this process holds it already."""
        if self.run_id == run_id:
            return
        client = MlflowClient()
        run = get_run(run_id)
        holder, now = Holder.of(run), time.time()
        if holder is not None and holder.live(run, now):
            raise _held(run_id, holder, now)
        generation = (holder.generation if holder else 0) + 1
        token = uuid.uuid4().hex
        claim = f"{socket.gethostname()} pid {os.getpid()} since {now:.3f} {token}"
        _claims.add(token)  # before the claim can be read: this process's others see it live
        try:
            client.log_param(run_id, f"{PARAM}.{generation}", claim)
        except MlflowException as e:
            _claims.discard(token)
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise
            winner = Holder.of(get_run(run_id))  # another process claimed it a moment before
            if winner is None or winner.generation < generation:
                raise
            raise _held(run_id, winner, time.time()) from None
        except BaseException:
            _claims.discard(token)
            raise
        self.run_id, self.generation, self._claim = run_id, generation, token
        self._thread = threading.Thread(target=self._beat, name="writer-lease", daemon=True)
        self._thread.start()

    def guard(self, steps: Iterable) -> Iterator:
        """`steps`, stopped by LeaseLost at the first step after the lease was lost."""
        for step in steps:
            if self._lost is not None:
                raise self._lost
            yield step

    def __enter__(self) -> WriterLease:
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is None:
            return
        _claims.discard(self._claim)
        # A beat in flight may be waiting out a server that is down: the thread is a daemon,
        # so it is not waited for long.
        self._thread.join(EXIT_WAIT_SECONDS)
        if self._lost is None:
            with contextlib.suppress(Exception), quick_exit():  # a stale lease frees itself
                MlflowClient().set_tag(self.run_id, heartbeat_tag(self.generation), RELEASED)

    def _beat(self) -> None:
        client = MlflowClient()
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                run = client.get_run(self.run_id)
                holder = Holder.of(run)
                if holder is not None and holder.generation > self.generation:
                    self._lost = LeaseLost(
                        f"run {self.run_id} was taken over by {holder.host} pid {holder.pid} "
                        f"while this process could not reach the tracking server for "
                        f"{STALE_SECONDS:.0f} s: training stopped, the run is that process's now"
                    )
                    return
                client.set_tag(self.run_id, heartbeat_tag(self.generation), f"{time.time():.3f}")
            except Exception:  # the server is down: the next beat tries again
                continue


def _held(run_id: str, holder: Holder, now: float) -> RunHeld:
    return RunHeld(
        f"run {run_id} is being trained by another process ({holder.describe(now)}): a run has "
        "one writer at a time; wait for that process to end (or stop it), then resume"
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
