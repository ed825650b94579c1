"""The tracking server goes away mid-run, for real: the training talks to it through a TCP proxy
that the test switches off (connections refused, open ones cut) and on again. Training goes on,
and once the server is back every epoch reaches it exactly once. If it is still gone after
training, the run fails with a clear message and resumes later. (Unreachable at start:
tests/test_cli_errors.py.)"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.tracking import outbox
from cifar_mlflow.tracking.outbox import CHECKPOINT_EPOCH_TAG

from .conftest import tiny_train_args
from .processes import (
    PER_EPOCH_KEYS,
    SMALL_RUN,
    TrainingProcess,
    steps,
    wait_for_checkpoint,
    wait_for_epoch,
)
from .proxy import Proxy

pytestmark = pytest.mark.slow

# MLflow's own client retries each call for ~4 minutes; the outbox retries on its own schedule
# (1, 2, 4, 8, then every 15 s), so one quick try per call keeps this test short.
QUICK_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@pytest.fixture
def proxy(mlflow_server, tracking, monkeypatch):
    """The shared server behind a proxy of this test's own; the training and the test's own
    MLflow calls go through it, so both see the outage."""
    target = urlparse(mlflow_server.uri)
    gate = Proxy((target.hostname, target.port))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", gate.uri)
    mlflow.set_tracking_uri(gate.uri)
    yield gate
    gate.down()
    mlflow.set_tracking_uri(mlflow_server.uri)


def test_server_gone_mid_run_then_back_loses_and_doubles_nothing(proxy, tracking, image_folder):
    process = TrainingProcess(
        tiny_train_args(image_folder, tracking, "--epochs", "3", "--checkpoint-every", "1",
                        *SMALL_RUN),
        env=QUICK_CLIENT,
    )
    run_id = process.run_id()
    wait_for_checkpoint(run_id, 1)
    proxy.down()

    process.wait_for_line(r"tracking server unreachable .* training goes on")
    process.wait_for_line(r"^epoch 3/3 ")  # trained epochs 2 and 3 with no server
    assert process.process.poll() is None, "gave up instead of waiting for the server"
    proxy.up()
    assert process.wait(300) == 0, process.stderr
    assert "tracking server is back" in process.stderr

    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH_KEYS:
        assert steps(run_id, key) == [1, 2, 3], key
    assert run.data.tags[CHECKPOINT_EPOCH_TAG] == "3"
    assert "final_test_acc" in run.data.metrics and "model_uri" in run.data.tags


def test_server_still_gone_after_training_fails_clearly_and_the_run_resumes_later(
    proxy, tracking, image_folder, monkeypatch
):
    """The wait for the server after the last epoch (10 min) is cut to 5 s here."""
    patience = outbox.DRAIN_AFTER_TRAINING_SECONDS
    monkeypatch.setattr(outbox, "DRAIN_AFTER_TRAINING_SECONDS", 5)
    for name, value in QUICK_CLIENT.items():
        monkeypatch.setenv(name, value)
    run_ids = []

    def cut_after_epoch_1() -> None:
        client = MlflowClient()
        experiment = poll(lambda: client.get_experiment_by_name(tracking))
        runs = poll(lambda: client.search_runs([experiment.experiment_id]) or None)
        run_ids.append(runs[0].info.run_id)
        wait_for_epoch(run_ids[0], 1)  # all of epoch 1 is on the server: only epoch 2 is lost
        proxy.down()

    cutter = threading.Thread(target=cut_after_epoch_1)
    cutter.start()
    args = tiny_train_args(image_folder, tracking, "--checkpoint-every", "1", *SMALL_RUN)
    result = CliRunner().invoke(cli, args)
    cutter.join()
    [run_id] = run_ids
    assert result.exit_code == 1, result.output
    assert (
        f"has not answered for 5 s: epochs 2 of run {run_id} are not recorded; once it is back, "
        f"run `cifar-mlflow train --resume {run_id}`"
    ) in result.output

    proxy.up()
    monkeypatch.setattr(outbox, "DRAIN_AFTER_TRAINING_SECONDS", patience)
    resumed = CliRunner().invoke(cli, ["train", "--resume", run_id])
    assert resumed.exit_code == 0, resumed.output
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key in PER_EPOCH_KEYS:
        assert steps(run_id, key) == [1, 2], key


def poll(read, timeout: float = 180):
    """`read()`'s first answer that is not None."""
    deadline = time.monotonic() + timeout
    while (found := read()) is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return found
