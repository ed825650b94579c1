"""SIGTERM and SIGINT sent to real processes: the step in progress finishes, the run is marked
KILLED with its last checkpoint kept, and the process exits promptly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.core import checkpoint
from cifar_mlflow.tracking.outbox import CHECKPOINT_EPOCH_TAG, CHECKPOINT_TAG
from cifar_mlflow.tracking.runs import FAILURE_TAG

from .conftest import tiny_train_args
from .processes import SMALL_RUN, TrainingProcess, steps, wait_for_metrics

# Batches of 4: a step takes ~0.3 s (~2 s on a loaded machine), then the last epoch's checkpoint
# is written and sent and the run is marked KILLED. Measured at load 15 on 2 cores: 32 s.
PROMPT_SECONDS = 60


# SIGTERM only: SIGINT takes the same path (core.signals.StopOnSignal handles both alike, as the
# stepper test below shows for each), and reaches real trainings in
# tests/test_sweep_signals.py, where a sweep forwards it to its children.
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_marks_the_run_killed_keeps_its_checkpoint_and_exits_promptly(
    signum, image_folder, tracking, tmp_path
):
    """At the default policy (5m) epoch 1 has no checkpoint when the signal comes in epoch 2:
    the signal writes it, and the run can be resumed from it."""
    process = TrainingProcess(
        tiny_train_args(image_folder, tracking, "--epochs", "3", "--batch-size", "4", *SMALL_RUN)
    )
    run_id = process.run_id()
    wait_for_metrics(run_id, 1)
    assert CHECKPOINT_EPOCH_TAG not in MlflowClient().get_run(run_id).data.tags
    sent = time.monotonic()
    process.process.send_signal(signum)
    assert process.wait(120) == 128 + signum
    assert time.monotonic() - sent < PROMPT_SECONDS

    name = signal.Signals(signum).name
    assert process.lines[-1] == (
        f"error: stopped by {name}: run {run_id} is marked KILLED; its checkpoint holds epoch 1: "
        f"continue it with `cifar-mlflow train --resume {run_id}`"
    ), process.stderr
    assert "Traceback" not in process.stderr
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[FAILURE_TAG] == f"stopped by {name}"
    assert steps(run_id, "test_acc") == [1]
    assert run.data.tags[CHECKPOINT_EPOCH_TAG] == "1"
    saved = client.download_artifacts(run_id, run.data.tags[CHECKPOINT_TAG], str(tmp_path))
    assert checkpoint.load(saved)["epoch"] == 1


@pytest.mark.slow
def test_sigterm_while_a_checkpoint_is_written_ends_killed_in_one_line(
    image_folder, tracking, tmp_path
):
    """SIGTERM sent while a real checkpoint file is being written (seen as its temporary file in
    the training's folder): the write completes, the run ends KILLED with the usual line."""
    process = TrainingProcess(
        tiny_train_args(image_folder, tracking, "--epochs", "3", "--checkpoint-every", "1",
                        *SMALL_RUN),
        env={"TMPDIR": str(tmp_path)},
    )  # fmt: skip
    run_id = process.run_id()
    deadline = time.monotonic() + 300
    while not (writing := list(tmp_path.glob("cifar-mlflow-*/epoch-*/.checkpoint.pt.*.tmp"))):
        assert process.process.poll() is None and time.monotonic() < deadline, process.stderr
        time.sleep(0.005)
    process.process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 143, process.stderr
    written = int(writing[0].parent.name.removeprefix("epoch-"))

    assert "Traceback" not in process.stderr, process.stderr
    last = process.lines[-1]
    assert last.startswith(f"error: stopped by SIGTERM: run {run_id} is marked KILLED; its "
                           "checkpoint holds epoch "), process.stderr  # fmt: skip
    epoch = int(last.split("checkpoint holds epoch ")[1].split(":")[0])
    assert last.endswith(f"continue it with `cifar-mlflow train --resume {run_id}`")
    assert epoch >= written  # the one being written, or the next if that epoch ended meanwhile
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[FAILURE_TAG] == "stopped by SIGTERM"
    assert run.data.tags[CHECKPOINT_EPOCH_TAG] == str(epoch)
    saved = MlflowClient().download_artifacts(run_id, run.data.tags[CHECKPOINT_TAG],
                                              str(tmp_path))  # fmt: skip
    assert checkpoint.load(saved)["epoch"] == epoch


STEPPER = """
import os, signal, sys, time
from cifar_mlflow.core.signals import Interrupted, StopOnSignal

def batches():
    for i in range(1, 6):
        print(f"making batch {i}", flush=True)
        yield i

try:
    with StopOnSignal() as stop:
        for i in stop.steps(batches()):
            print(f"step {i} started", flush=True)
            if i == 2:  # the signal arrives mid-step, for certain: the process sends it itself
                os.kill(os.getpid(), int(sys.argv[1]))
            time.sleep(0.1)  # the rest of the step
            print(f"step {i} finished", flush=True)
except Interrupted as e:
    print(f"interrupted: {e}", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_step_lets_the_step_finish_and_starts_no_other(signum):
    done = subprocess.run([sys.executable, "-c", STEPPER, str(int(signum))], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "making batch 1", "step 1 started", "step 1 finished",
        "making batch 2", "step 2 started", "step 2 finished",
        f"interrupted: stopped by {signal.Signals(signum).name}",
    ]  # fmt: skip
