"""The one run lifecycle every command uses (tracking.runs.tracked_run), against the real server:
FINISHED on success, FAILED with failure_reason on an error, KILLED on SIGINT or SIGTERM (sent
for real), the run `mlflow run` made is the one recorded into, and a continued run loses the
failure reason of its earlier attempt. A run's lifecycle, and a dead process's run ended for it, on
PostgreSQL too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.core.errors import UserError
from cifar_mlflow.tracking.runs import FAILURE_TAG, RunSpec, end_abandoned, tracked_run

from .conftest import on_both_stores


def spec(experiment: str, **changes) -> RunSpec:
    return RunSpec(**{"experiment": experiment, "name": "lifecycle", "tags": {"job": "test"},
                      "params": {"answer": 42}, **changes})  # fmt: skip


@on_both_stores
def test_a_run_that_completes_is_finished_with_its_tags_and_params(tracking):
    with tracked_run(spec(tracking)) as run_id:
        assert mlflow.active_run().info.run_id == run_id
    run = MlflowClient().get_run(run_id)
    assert (run.info.status, run.info.run_name) == ("FINISHED", "lifecycle")
    assert run.data.tags["job"] == "test" and run.data.params["answer"] == "42"
    assert FAILURE_TAG not in run.data.tags and mlflow.active_run() is None


@pytest.mark.parametrize(
    "error, reason",
    [(UserError("bad input: fix it"), "bad input: fix it"),
     (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero")],
)  # fmt: skip
def test_a_run_that_raises_is_failed_with_the_reason(error, reason, tracking):
    with pytest.raises(type(error)), tracked_run(spec(tracking)) as run_id:
        raise error
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG] == reason
    assert mlflow.active_run() is None


SIGNALLED = """
import os, signal, sys, time
from cifar_mlflow.core.signals import StopOnSignal
from cifar_mlflow.tracking.runs import RunSpec, tracked_run
with StopOnSignal(), tracked_run(RunSpec(sys.argv[1], "signalled")) as run_id:
    print(run_id, flush=True)
    os.kill(os.getpid(), int(sys.argv[2]))  # arrives here, inside the run, for certain
    time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_run_killed(signum, tracking):
    done = subprocess.run([sys.executable, "-c", SIGNALLED, tracking, str(int(signum))],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    run_id = done.stdout.splitlines()[0]  # MLflow then prints where to view the run
    assert "Interrupted" in done.stderr  # unhandled here: no CLI around it
    run = MlflowClient().get_run(run_id)
    name = signal.Signals(signum).name
    assert run.info.status == "KILLED" and run.data.tags[FAILURE_TAG] == f"stopped by {name}"


def test_the_run_mlflow_run_made_is_the_one_recorded_into(tracking, monkeypatch):
    client = MlflowClient()
    launched = client.create_run(client.create_experiment(tracking)).info.run_id
    client.log_param(launched, "answer", "42.0")  # as `mlflow run` logs it: typed by the user
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    with tracked_run(spec(tracking)) as run_id:
        pass
    assert run_id == launched
    run = client.get_run(launched)
    assert run.info.status == "FINISHED" and run.data.params["answer"] == "42.0"
    assert run.data.tags["job"] == "test"


def test_a_continued_run_drops_its_earlier_failure_reason(tracking):
    with pytest.raises(UserError), tracked_run(spec(tracking)) as run_id:
        raise UserError("first attempt failed")
    with tracked_run(spec(tracking, run_id=run_id)):
        assert FAILURE_TAG not in MlflowClient().get_run(run_id).data.tags
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


@on_both_stores
def test_a_run_left_running_by_a_dead_process_is_ended_failed_and_an_ended_one_kept(tracking):
    client = MlflowClient()
    experiment_id = client.create_experiment(tracking)
    abandoned = client.create_run(experiment_id).info.run_id
    assert end_abandoned(client, abandoned, "killed by SIGKILL") == "FAILED"
    run = client.get_run(abandoned)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG] == "killed by SIGKILL"
    finished = client.create_run(experiment_id).info.run_id
    client.set_terminated(finished, "FINISHED")
    assert end_abandoned(client, finished, "ignored") == "FINISHED"
    assert FAILURE_TAG not in client.get_run(finished).data.tags


def test_a_new_run_leaves_the_environment_of_later_processes_alone(tracking):
    """mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; the lifecycle does not call it for
    a new run, so a sweep's children or a later `mlflow run` are not steered by it."""
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    with tracked_run(spec(tracking)):
        pass
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ


def test_mlflow_run_id_left_naming_a_finished_run_is_refused_and_the_run_untouched(
    tracking, monkeypatch
):
    """A shell that kept MLFLOW_RUN_ID after an `mlflow run`: no command records into that run."""
    with tracked_run(spec(tracking)) as finished:
        pass
    monkeypatch.setenv("MLFLOW_RUN_ID", finished)
    with pytest.raises(UserError, match=f"MLFLOW_RUN_ID={finished} names a run that has already "
                                        "finished.*unset MLFLOW_RUN_ID"):  # fmt: skip
        with tracked_run(spec(tracking, tags={"job": "compare"})):
            pass
    run = MlflowClient().get_run(finished)
    assert run.info.status == "FINISHED" and run.data.tags["job"] == "test"
    assert mlflow.active_run() is None
