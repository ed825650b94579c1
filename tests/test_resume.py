"""Checkpoints and resume, with real faults: a training process killed with SIGKILL between two
checkpoints continues from the older one in the same MLflow run and ends bitwise equal (on CPU)
to a run never interrupted, each epoch logged once."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import uuid

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from cifar_mlflow.cli import cli
from cifar_mlflow.core import checkpoint
from cifar_mlflow.tracking.outbox import CHECKPOINT_EPOCH_TAG, CHECKPOINT_TAG, RESUMED_TAG, SLOTS
from cifar_mlflow.tracking.predictions import load_predictions
from cifar_mlflow.tracking.runs import FAILURE_TAG

from .conftest import on_both_stores, tiny_train_args, tracking_on
from .processes import (
    DETERMINISTIC_KEYS,
    PER_EPOCH_KEYS,
    SMALL_RUN,
    TrainingProcess,
    history,
    steps,
    wait_for_checkpoint,
    wait_for_metrics,
)

pytestmark = pytest.mark.slow


EPOCHS = 4


def resumable_args(data_dir, experiment, *extra: str) -> list[str]:
    return tiny_train_args(data_dir, experiment, "--epochs", str(EPOCHS), "--seed", "5",
                           *SMALL_RUN, *extra)  # fmt: skip


def killed_between_checkpoints(data_dir, experiment) -> str:
    """A run with a checkpoint every 2 epochs, SIGKILLed in epoch 4, once epoch 3 (no checkpoint)
    is logged: its run id. The server holds epoch 2's checkpoint and the metrics of 1 to 3."""
    process = TrainingProcess(resumable_args(data_dir, experiment, "--checkpoint-every", "2"))
    run_id = process.run_id()
    wait_for_checkpoint(run_id, 2)
    process.wait_for_line(r"^epoch 3/4 ")
    wait_for_metrics(run_id, 3)
    process.process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"  # nobody could mark it
    assert steps(run_id, "test_acc") == [1, 2, 3], "killed too late: epoch 4 had finished"
    return run_id


def train(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def training_params(run_id: str) -> list[mlflow.entities.Param]:
    """A run's params as a hand-made copy of it needs them: without its writers' claims (the
    copy has had no writer)."""
    params = MlflowClient().get_run(run_id).data.params
    return [mlflow.entities.Param(k, v) for k, v in params.items() if not k.startswith("writer.")]


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def logged_weights(run_id: str, checkpoint: str) -> dict[str, torch.Tensor]:
    """The weights of the run's LoggedModel `checkpoint` ("best" or "final")."""
    model_id = MlflowClient().get_run(run_id).data.tags[f"{checkpoint}_model_id"]
    return mlflow.pytorch.load_model(f"models:/{model_id}").state_dict()


def assert_same_as(run_id: str, reference: str) -> None:
    """Each epoch logged exactly once, with the reference's values, and the same `best` and
    `final` models and predictions: the best-so-far weights survived the crash (an epoch
    before it is predicted again from them)."""
    client = MlflowClient()
    run, ref = client.get_run(run_id), client.get_run(reference)
    assert run.info.status == "FINISHED"
    assert FAILURE_TAG not in run.data.tags
    for key in PER_EPOCH_KEYS:
        assert steps(run_id, key) == list(range(1, EPOCHS + 1)), key
    for key in DETERMINISTIC_KEYS:
        assert history(run_id, key) == history(reference, key), key
    for key in ("best_epoch", "best_val_acc", "test_acc_at_best", "final_test_acc"):
        assert run.data.metrics[key] == ref.data.metrics[key], key
    for name in ("best", "final"):
        mine, theirs = logged_weights(run_id, name), logged_weights(reference, name)
        assert mine.keys() == theirs.keys() and len(mine) > 100  # every tensor of ResNet-18
        assert [k for k in mine if not torch.equal(mine[k], theirs[k])] == [], name
        mine, theirs = load_predictions(run_id, name), load_predictions(reference, name)
        for split in ("test", "val"):
            pred = f"{split}_pred"
            assert np.array_equal(getattr(mine, pred), getattr(theirs, pred)), (name, split)


@pytest.fixture(scope="module")
def uninterrupted(tracking_server, image_folder) -> str:
    """The reference run: same settings and seed, never stopped."""
    experiment = f"reference-{uuid.uuid4().hex[:8]}"
    with tracking_on(tracking_server.uri):
        result = train(*resumable_args(image_folder, experiment))
        assert result.exit_code == 0, result.output
        [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return run.info.run_id


@pytest.mark.parametrize("how", ["--resume", "relaunch-with-MLFLOW_RUN_ID"])
def test_sigkill_between_checkpoints_then_resume_matches_an_uninterrupted_run(
    how, image_folder, tracking, uninterrupted, monkeypatch
):
    """Resumed from epoch 2's checkpoint, the run trains epoch 3 again (its metrics, already on
    the server, are not sent twice) and epoch 4."""
    run_id = killed_between_checkpoints(image_folder, tracking)
    if how == "--resume":
        result = train("train", "--resume", run_id)
    else:  # what `mlflow run --run-id RUN_ID` does: the same command, the run id in the env
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
        result = train(*resumable_args(image_folder, tracking, "--checkpoint-every", "2"))
    assert result.exit_code == 0, result.output
    assert "epoch 3/4" in result.output and "epoch 2/4" not in result.output
    assert_same_as(run_id, uninterrupted)
    assert MlflowClient().get_run(run_id).data.tags[RESUMED_TAG] == "2"


@pytest.fixture(scope="module")
def killed_checkpoint(mlflow_server, image_folder, tmp_path_factory):
    """A killed run's own checkpoint file (epoch 2) and its params, made once: a file serves a
    run on either store."""
    experiment = f"killed-{uuid.uuid4().hex[:8]}"
    with tracking_on(mlflow_server.uri):
        killed = killed_between_checkpoints(image_folder, experiment)
        client = MlflowClient()
        saved = client.download_artifacts(killed, client.get_run(killed).data.tags[CHECKPOINT_TAG],
                                          str(tmp_path_factory.mktemp("killed")))  # fmt: skip
        return saved, experiment, training_params(killed)


@on_both_stores
def test_epoch_whose_metrics_never_arrived_is_logged_once_on_resume(
    tracking, uninterrupted, killed_checkpoint
):
    """A process can die after its checkpoint reached the server and before its metrics did.
    Here the server is left in that state by hand: epoch 2's checkpoint (a killed run's own
    file), epoch 1's metrics only. Resuming logs epoch 2 from the checkpoint and trains 3 and 4."""
    client = MlflowClient()
    saved, experiment, params = killed_checkpoint
    assert checkpoint.load(saved)["epoch"] == 2

    # In the experiment the killed run's settings name: a checkpoint resumes only with them.
    run = client.create_run(mlflow.set_experiment(experiment).experiment_id)
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, v, 0, 1)
            for k in PER_EPOCH_KEYS
            for step, v in history(uninterrupted, k)
            if step == 1
        ],
        params=params,
    )
    client.log_artifact(run_id, saved, SLOTS[0])
    client.set_tag(run_id, CHECKPOINT_TAG, f"{SLOTS[0]}/checkpoint.pt")
    client.set_tag(run_id, CHECKPOINT_EPOCH_TAG, "2")

    result = train("train", "--resume", run_id)
    assert result.exit_code == 0, result.output
    assert "epoch 3/4" in result.output and "epoch 2/4" not in result.output
    assert_same_as(run_id, uninterrupted)


def test_resume_refuses_what_it_cannot_continue(tracking, uninterrupted, image_folder,
                                                 monkeypatch, tmp_path):  # fmt: skip
    changed = train("train", "--resume", uninterrupted, "--lr", "0.1")
    assert changed.exit_code == 2 and "drop --lr" in changed.output
    finished = train("train", "--resume", uninterrupted)
    assert finished.exit_code == 1 and "already finished" in finished.output
    unknown = train("train", "--resume", uuid.uuid4().hex)
    assert unknown.exit_code == 1 and "no run" in unknown.output

    client = MlflowClient()

    def copy_of_reference() -> str:
        fresh = client.create_run(mlflow.set_experiment(tracking).experiment_id).info.run_id
        client.log_batch(fresh, params=training_params(uninterrupted))
        return fresh

    no_checkpoint = train("train", "--resume", copy_of_reference())
    assert no_checkpoint.exit_code == 1 and "has no checkpoint" in no_checkpoint.output

    # The checkpoint its tag names is gone from the artifact store.
    gone = copy_of_reference()
    client.set_tag(gone, CHECKPOINT_TAG, f"{SLOTS[0]}/checkpoint.pt")
    assert_one_line_error(train("train", "--resume", gone), f"run {gone}'s checkpoint "
                          f"{SLOTS[0]}/checkpoint.pt cannot be fetched")  # fmt: skip

    # A checkpoint that lacks a field.
    state = {"format": checkpoint.FORMAT, **{k: 0 for k in checkpoint.FIELDS if k != "history"}}
    damaged = copy_of_reference()
    client.log_artifact(damaged, str(checkpoint.save(state, tmp_path / "damaged" /
                                                     "checkpoint.pt")), SLOTS[0])  # fmt: skip
    client.set_tag(damaged, CHECKPOINT_TAG, f"{SLOTS[0]}/checkpoint.pt")
    assert_one_line_error(train("train", "--resume", damaged), f"run {damaged}'s checkpoint "
                          f"{SLOTS[0]}/checkpoint.pt lacks history")
    for run_id in (gone, damaged):  # refused before the run was opened: left as it was
        assert FAILURE_TAG not in client.get_run(run_id).data.tags

    # MLFLOW_RUN_ID left in the shell after an `mlflow run`, naming a finished run.
    monkeypatch.setenv("MLFLOW_RUN_ID", uninterrupted)
    assert_one_line_error(train(*resumable_args(image_folder, tracking)),
                          f"MLFLOW_RUN_ID={uninterrupted} names a run that has already finished",
                          "unset MLFLOW_RUN_ID")  # fmt: skip


def test_a_killed_run_is_not_continued_on_changed_data(tracking, image_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    process = TrainingProcess(resumable_args(data, tracking, "--checkpoint-every", "1"))
    run_id = process.run_id()
    wait_for_checkpoint(run_id, 1)
    process.process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL

    changed = data / "train" / "cat" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(changed)
    line = assert_one_line_error(train("train", "--resume", run_id),
                                 f"the data changed since run {run_id} was trained: the ",
                                 f"give that data to --data-dir ({data} now)")  # fmt: skip
    assert " split (" in line and "digest " in line
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "RUNNING" and FAILURE_TAG not in run.data.tags  # left as it was
    assert steps(run_id, "test_acc") in ([], [1])


WRITER = """
import sys, time
from pathlib import Path
from cifar_mlflow.core.files import atomic_write
target = Path(sys.argv[1])
with atomic_write(target) as f:
    f.write(b"A" * 3_000_000)  # the first version, whole
with atomic_write(target) as f:
    f.write(b"B" * 1_500_000)  # half of the second
    f.flush()
    print("half written", flush=True)
    time.sleep(60)  # SIGKILL lands here, mid-write
    f.write(b"B" * 1_500_000)
"""


def test_checkpoint_file_is_never_half_written_even_under_sigkill(tmp_path):
    """Kill a process in the middle of rewriting a file: what is left is the previous version,
    whole; the interrupted write left only a `.tmp` file beside it, which no reader opens."""
    target = tmp_path / "checkpoint.pt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert writer.stdout.readline() == "half written\n"
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(30) == -signal.SIGKILL
    finally:
        writer.kill()
    assert target.read_bytes() == b"A" * 3_000_000
    [leftover] = [p for p in tmp_path.iterdir() if p != target]
    assert leftover.name.endswith(".tmp") and leftover.read_bytes() == b"B" * 1_500_000
