"""A training's progress as structured events, for the process that started it (a sweep).

The starter opens a pipe and names its write end in CIFAR_MLFLOW_EVENTS_FD; the training writes
one JSON object per line to it: `start` once its run is open, then `epoch` after every epoch.
A pipe rather than the training's text output: the log lines stay free to change, and rather
than a file: nothing is left on disk and the reader needs no polling (it reads to EOF, which
comes when the process is gone, however it ended). Nothing here imports torch or MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import IO

EVENTS_FD = "CIFAR_MLFLOW_EVENTS_FD"
# Set by a sweep for each training it starts: how many of its runs train at once on that
# training's device (a run logs it as runs_per_device; its speed depends on it).
RUNS_PER_DEVICE = "CIFAR_MLFLOW_RUNS_PER_DEVICE"


def runs_per_device() -> int:
    """How many runs share this training's device, as its sweep says; a run alone: 1."""
    try:
        return max(1, int(os.environ.get(RUNS_PER_DEVICE, "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class Started:
    """The training's run is open."""

    run_id: str
    epochs: int


@dataclass(frozen=True)
class Epoch:
    """An epoch is done (val_acc: None when no validation split is held out)."""

    epoch: int
    epochs: int
    train_loss: float
    test_acc: float
    images_per_second: float
    val_acc: float | None = None


Event = Started | Epoch
KINDS = {"start": Started, "epoch": Epoch}


def as_dict(event: Event) -> dict:
    kind = next(k for k, cls in KINDS.items() if isinstance(event, cls))
    return {"event": kind, **asdict(event)}


def from_dict(values: Mapping) -> Event | None:
    """The event these values describe (other keys ignored: a Tune result holds its own), or
    None for anything else (no event, a newer writer's kind, a field missing)."""
    cls = KINDS.get(values.get("event"))
    if cls is None:
        return None
    try:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
    except TypeError:
        return None


class EventWriter:
    """Where this process sends its events: the pipe its starter named, else nowhere."""

    def __init__(self, stream: IO[str] | None):
        self.stream = stream

    @classmethod
    def from_environment(cls) -> EventWriter:
        """The pipe named in CIFAR_MLFLOW_EVENTS_FD. The variable is taken out of the
        environment, and the pipe kept from processes this one starts: what they inherited
        could name some other file of theirs, or hold the pipe open after this one has ended."""
        fd = os.environ.pop(EVENTS_FD, None)
        try:
            if fd is None or not stat.S_ISFIFO(os.fstat(int(fd)).st_mode):
                return cls(None)
            os.set_inheritable(int(fd), False)
            return cls(open(int(fd), "w", buffering=1))
        except (ValueError, OSError):  # not ours to fail a training over: progress is optional
            return cls(None)

    def send(self, event: Event) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(json.dumps(as_dict(event)) + "\n")
        except (ValueError, OSError):  # the starter is gone: the training goes on without it
            stream, self.stream = self.stream, None
            with contextlib.suppress(OSError):
                stream.close()  # what it still buffers would fail again at exit


def read_events(stream: IO[str]) -> Iterator[Event]:
    """The events on `stream` until EOF; a line that is not one (cut short by a kill) is skipped."""
    for line in stream:
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        if isinstance(fields, dict) and (event := from_dict(fields)) is not None:
            yield event
