"""MLflow's refusals, from a real server or MLflow's own client: one line, before any data is
decoded or any run is opened (tracking URIs it will not open, a deleted experiment); and a
refusal for good in the middle of a run (the run deleted in the UI) stops the training within
seconds, keeping its checkpoint, while an outage is still waited out (tests/test_tracking_outage.py).
Every data directory here holds no CIFAR-10: an error about the data would mean the check came
too late."""

from __future__ import annotations

import threading
import time

import mlflow
import pytest
import requests
from click.testing import CliRunner
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.core import checkpoint
from cifar_mlflow.tracking import outbox
from cifar_mlflow.tracking.connection import is_permanent

from .conftest import free_port, tiny_train_args
from .processes import wait_for_epoch
from .test_options import assert_one_line_error

# Two steps an epoch: the refusal comes at the end of the epoch after the deletion.
TINY_RUN = ("--model", "ghost_resnet18", "--train-limit", "20", "--test-limit", "10",
            "--val-size", "0", "--batch-size", "10")  # fmt: skip


@pytest.fixture
def no_cifar(tmp_path):
    (tmp_path / "notes.txt").write_text("not CIFAR-10")
    return tmp_path


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("foo://somewhere", "unsupported URI 'foo://somewhere'"),
        ("FILE_STORE", "filesystem tracking backend (e.g., './mlruns') is in maintenance mode"),
        # a driver not installed (psycopg, the one the test extra installs, is what README uses)
        ("postgresql+psycopg2://user@127.0.0.1/db", "No module named"),
        ("databricks", "Databricks credential configuration failed"),
    ],
)
def test_tracking_uri_mlflow_will_not_open_is_one_line_before_the_data(
    uri, reason, no_cifar, tmp_path, monkeypatch
):
    uri = str(tmp_path / "mlruns") if uri == "FILE_STORE" else uri  # MLflow 3 retired it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, tiny_train_args(no_cifar, "refusals"))
    line = assert_one_line_error(result, exit_code=1)
    shown = uri.replace("user@", "")  # a URI is shown without its user information
    assert line.startswith(f"error: MLflow cannot use the tracking URI {shown!r} (")
    assert reason in line and "set MLFLOW_TRACKING_URI" in line


def test_deleted_experiment_is_one_line_that_says_how_to_restore_it(no_cifar, tracking):
    client = MlflowClient()
    experiment_id = client.create_experiment(tracking)
    client.delete_experiment(experiment_id)
    result = CliRunner().invoke(cli, tiny_train_args(no_cifar, tracking))
    line = assert_one_line_error(result, exit_code=1)
    assert f"experiment {tracking!r} is deleted" in line
    assert f"`mlflow experiments restore --experiment-id {experiment_id}`" in line
    assert "choose another name" in line
    assert client.search_runs([experiment_id], run_view_type=ViewType.ALL) == []


def test_only_refusals_for_good_are_permanent(tracking, monkeypatch):
    """What the outbox retries, told from real answers: a deleted run's refusal is for good; no
    answer at all is not."""
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(tracking)).info.run_id
    client.delete_run(run_id)
    with pytest.raises(MlflowException) as refused:
        client.log_metric(run_id, "x", 1.0)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE" and is_permanent(refused.value)

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as no_answer:
        MlflowClient(f"http://127.0.0.1:{free_port()}").log_metric(run_id, "x", 1.0)
    assert not is_permanent(no_answer.value)
    assert not is_permanent(requests.ConnectionError("refused"))
    # A server whose database had no connection free in time answers 400 (verbatim, from
    # bench/bench_concurrency.py with 32 runs at once): busy, not a refusal.
    busy = RestException({"error_code": "BAD_REQUEST", "message": (
        "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00 "
        "(Background on this error at: https://sqlalche.me/e/21/3o7r)")})  # fmt: skip
    assert busy.get_http_status_code() == 400 and not is_permanent(busy)


def test_an_error_of_this_process_stops_the_outbox_at_once_in_its_own_words(
    tracking, tmp_path, monkeypatch
):
    """A checkpoint that cannot be read (a disk error, say) is no outage: not 600 s of retries
    ending in "the server is gone", but the error itself, raised at the next training step."""
    monkeypatch.chdir(tmp_path)
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(tracking)).info.run_id
    missing = tmp_path / "epoch-1" / outbox.CHECKPOINT_FILE  # never written
    started = time.monotonic()
    with pytest.raises(outbox.LocalFailure) as failed:
        with outbox.Outbox(run_id) as box:
            box.put(1, {"train_loss": 1.0})
            box.put_checkpoint(1, missing)
            for _ in box.guard(iter(lambda: time.sleep(0.05), 1)):  # steps until it is raised
                assert time.monotonic() - started < 30
    assert time.monotonic() - started < 30
    message = str(failed.value)
    assert message.startswith(f"recording run {run_id}'s results failed in this process, not on "
                              "the tracking server: FileNotFoundError: ")  # fmt: skip
    assert "no retry can change that" in message and "server" not in message.split(": ", 2)[2]
    assert isinstance(failed.value.__cause__, FileNotFoundError)
    assert outbox.is_local(failed.value.__cause__) and outbox.is_local(TypeError("a bug"))
    assert client.list_artifacts(run_id) == []  # nothing of the checkpoint reached the run


def test_no_answer_from_a_server_is_not_a_local_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for call in (lambda c: c.log_metric("0" * 32, "x", 1.0), lambda c: c.get_run("0" * 32)):
        with pytest.raises(Exception) as no_answer:
            call(MlflowClient(f"http://127.0.0.1:{free_port()}"))
        assert not outbox.is_local(no_answer.value), repr(no_answer.value)
    with pytest.raises(Exception) as unresolved:
        requests.get("http://no-such-host.invalid/", timeout=5)
    assert not outbox.is_local(unresolved.value)


@pytest.mark.slow  # trains for real until the run is deleted
def test_run_deleted_mid_training_stops_within_seconds_and_keeps_the_checkpoint(
    image_folder, tracking, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where outputs/checkpoints/ goes
    deleted_at: list[float] = []
    run_ids: list[str] = []

    def delete_after_epoch_1() -> None:
        client = MlflowClient()
        deadline = time.monotonic() + 300
        while not (runs := client.search_runs([poll_experiment(client, tracking, deadline)])):
            time.sleep(0.2)
        run_ids.append(runs[0].info.run_id)
        wait_for_epoch(run_ids[0], 1)
        client.delete_run(run_ids[0])  # what the UI's delete button does
        deleted_at.append(time.monotonic())

    deleter = threading.Thread(target=delete_after_epoch_1)
    deleter.start()
    result = CliRunner().invoke(
        cli, tiny_train_args(image_folder, tracking, *TINY_RUN, "--epochs", "50",
                             "--checkpoint-every", "1"),
    )  # fmt: skip
    ended = time.monotonic()
    deleter.join()
    [run_id] = run_ids
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert ended - deleted_at[0] < 20, "kept training after the server refused the run"
    lines = result.stderr.strip().splitlines()
    assert not any(line.startswith(("warning", "could not", "Traceback")) for line in lines[-3:])
    error = lines[-1]
    kept = (tmp_path / outbox.KEPT_CHECKPOINTS / run_id / outbox.CHECKPOINT_FILE).resolve()
    assert error.startswith(
        f"error: the tracking server {mlflow.get_tracking_uri()} refused run {run_id}'s results "
        "(INVALID_PARAMETER_VALUE: "
    )
    assert (
        f"): the run is deleted on the server (`mlflow runs restore --run-id {run_id}` brings it "
        "back), so it cannot be marked FAILED either; "
    ) in error
    epoch = int(error.split("the checkpoint of epoch ")[1].split()[0])
    assert error.endswith(
        f"nothing trained is lost: the checkpoint of epoch {epoch} is kept in {kept}"
    )
    assert checkpoint.load(kept)["epoch"] == epoch >= 2  # epoch 1 reached the server, then more
    assert epoch < 50


def poll_experiment(client: MlflowClient, name: str, deadline: float) -> str:
    while (found := client.get_experiment_by_name(name)) is None:
        assert time.monotonic() < deadline, "the training never created its experiment"
        time.sleep(0.2)
    return found.experiment_id
