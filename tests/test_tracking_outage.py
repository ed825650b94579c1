"""The tracking server goes away mid-run, for real: its process is stopped, training goes on, and
when a server comes back on the same database and port every epoch reaches it exactly once.
If it is still gone after training, the run fails with a clear message and resumes later.
(Unreachable at start: tests/test_cli_errors.py.)"""

from __future__ import annotations

import subprocess
import threading
import time

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow import outbox
from cifar_mlflow.cli import cli
from cifar_mlflow.outbox import CHECKPOINT_EPOCH_TAG

from .conftest import MlflowServer, tiny_train_args
from .processes import (
    PER_EPOCH_KEYS,
    SERVER_START_SECONDS,
    SMALL_RUN,
    TrainingProcess,
    serving,
    steps,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow

# MLflow's own client retries each call for ~4 minutes; the outbox retries on its own schedule
# (1, 2, 4, 8, then every 15 s), so one quick try per call keeps this test short.
QUICK_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def start_again(server: MlflowServer) -> None:
    """The same command line: same port, database and artifact folder."""
    server.log = open(server.root / "server.log", "ab")
    server.process = subprocess.Popen(
        server.process.args, stdout=server.log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server.wait_ready(SERVER_START_SECONDS)


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A server of this test's own, to stop and restart; the test process talks to it too."""
    with serving(MlflowServer(tmp_path)) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow.set_tracking_uri(server.uri)
        yield server


def test_server_stopped_mid_run_then_restarted_loses_and_doubles_nothing(own_server, image_folder):
    process = TrainingProcess(
        tiny_train_args(image_folder, "outage", "--epochs", "3", *SMALL_RUN), env=QUICK_CLIENT
    )
    run_id = process.run_id()
    wait_for_checkpoint(run_id, 1)
    own_server.stop()

    process.wait_for_line(r"tracking server unreachable .* training goes on")
    process.wait_for_line(r"^epoch 3/3 ")  # trained epochs 2 and 3 with no server
    assert process.process.poll() is None, "gave up instead of waiting for the server"
    start_again(own_server)
    assert process.wait(300) == 0, process.stderr
    assert "tracking server is back" in process.stderr

    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH_KEYS:
        assert steps(run_id, key) == [1, 2, 3], key
    assert run.data.tags[CHECKPOINT_EPOCH_TAG] == "3"
    assert "best_test_acc" in run.data.metrics and "model_uri" in run.data.tags


def test_server_still_gone_after_training_fails_clearly_and_the_run_resumes_later(
    own_server, image_folder, monkeypatch
):
    """The wait for the server after the last epoch (10 min) is cut to 5 s here."""
    patience = outbox.DRAIN_AFTER_TRAINING_SECONDS
    monkeypatch.setattr(outbox, "DRAIN_AFTER_TRAINING_SECONDS", 5)
    for name, value in QUICK_CLIENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    run_ids = []

    def stop_server_after_epoch_1() -> None:
        while not (runs := mlflow.search_runs(experiment_names=["gone"], output_format="list")):
            time.sleep(0.2)
        run_ids.append(runs[0].info.run_id)
        wait_for_checkpoint(run_ids[0], 1)
        own_server.stop()

    stopper = threading.Thread(target=stop_server_after_epoch_1)
    stopper.start()
    args = tiny_train_args(image_folder, "gone", "--epochs", "2", *SMALL_RUN)
    result = CliRunner().invoke(cli, args)
    stopper.join()
    [run_id] = run_ids
    assert result.exit_code == 1
    assert (
        f"has not answered for 5 s: epochs 2 of run {run_id} are not recorded; once it is back, "
        f"run `cifar-mlflow train --resume {run_id}`"
    ) in result.output

    start_again(own_server)
    monkeypatch.setattr(outbox, "DRAIN_AFTER_TRAINING_SECONDS", patience)
    resumed = CliRunner().invoke(cli, ["train", "--resume", run_id])
    assert resumed.exit_code == 0, resumed.output
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key in PER_EPOCH_KEYS:
        assert steps(run_id, key) == [1, 2], key
