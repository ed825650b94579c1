"""Real training processes for the reliability tests: start one, watch its stderr, signal or kill
it, and read what reached the tracking server."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from mlflow.tracking import MlflowClient

from cifar_mlflow.tracking.outbox import CHECKPOINT_EPOCH_TAG

from .conftest import MlflowServer

# Small enough for a loaded 2-core machine, large enough that an epoch has several steps.
SMALL_RUN = ("--train-limit", "48", "--test-limit", "20")
PER_EPOCH_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds",
                  "images_per_second")  # fmt: skip
DETERMINISTIC_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "lr")
# `mlflow server` starts in ~20 s, in minutes on a loaded shared machine (measured: 80 s).
SERVER_START_SECONDS = 300


class TrainingProcess:
    """`python -m cifar_mlflow <args>` in its own process; stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cifar_mlflow", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 180) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(
                    f"exited {self.process.returncode} before {pattern!r}:\n{self.stderr}"
                )
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.stderr}")

    def run_id(self) -> str:
        return self.wait_for_line(r"^run ([0-9a-f]{32}):").group(1)

    def wait(self, timeout: float = 180) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self._reader.join(5)
        return code


def wait_for_checkpoint(run_id: str, epoch: int, timeout: float = 180) -> None:
    """Until the server holds the run's checkpoint of `epoch` (the outbox sends it in the
    background while the next epoch trains)."""
    client = MlflowClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get_run(run_id).data.tags.get(CHECKPOINT_EPOCH_TAG) == str(epoch):
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of epoch {epoch} on the server within {timeout} s")


def wait_for_metrics(run_id: str, epoch: int, timeout: float = 180) -> None:
    """Until the server holds every metric of the run's `epoch` (sent as soon as it ends)."""
    deadline = time.monotonic() + timeout
    while any(epoch not in steps(run_id, key) for key in PER_EPOCH_KEYS):
        assert time.monotonic() < deadline, f"epoch {epoch}'s metrics did not arrive"
        time.sleep(0.1)


def wait_for_epoch(run_id: str, epoch: int, timeout: float = 180) -> None:
    """Until the server holds the run's checkpoint of `epoch` and every metric of that epoch."""
    wait_for_checkpoint(run_id, epoch, timeout)
    wait_for_metrics(run_id, epoch, timeout)


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def steps(run_id: str, key: str) -> list[int]:
    return [step for step, _ in history(run_id, key)]


@contextlib.contextmanager
def serving(server: MlflowServer) -> Iterator[MlflowServer]:
    """A server of a test's own: ready (waiting longer than conftest's default), then stopped."""
    try:
        server.wait_ready(SERVER_START_SECONDS)
        yield server
    finally:
        server.stop()
