"""The tracking server goes away mid-run, for real: its process is stopped, training goes on, and
when a server comes back on the same database and port every epoch reaches it exactly once.
(Unreachable at start: tests/test_cli_errors.py.)"""

from __future__ import annotations

import subprocess

import mlflow
import pytest
from mlflow.tracking import MlflowClient

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
QUICK_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


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
