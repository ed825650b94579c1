"""A sweep and its children under signals, for real: each child in a process group of its own,
one SIGINT to the sweep forwarded once to each running child, every run KILLED once, nothing
left running; a child that does not stop in time is killed and its run ended KILLED for it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.sweep.executors import Children, Launch, launch, settle

from .processes import TrainingProcess
from .test_sweep import sweep_runs

# Two children at once on the CPU (--runs-per-gpu 2 without a GPU), each far from done when the
# signal comes: 5 steps of 4 images an epoch, 50 epochs.
CHILD = ("--epochs", "50", "--batch-size", "4", "--train-limit", "20", "--test-limit", "10",
         "--val-size", "0", "--device", "cpu", "--no-system-metrics")  # fmt: skip
PROMPT_SECONDS = 30  # the promise: the sweep is gone within 30 s of the signal

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@linux_only
def test_one_sigint_to_the_sweep_kills_each_running_child_once_and_exits_promptly(
    tracking, mlflow_server, image_folder, tmp_path
):
    pids = tmp_path / "grandchildren.txt"
    sweep = TrainingProcess(
        ["sweep", "--experiment", tracking, "--sweep-id", "sig", "--data-dir", str(image_folder),
         "--activation", "relu", "--activation", "gelu", *CHILD, "--runs-per-gpu", "2",
         "--output-dir", str(tmp_path / "report")],
        env={"MLFLOW_TRACKING_URI": mlflow_server.uri, **starting_grandchildren(tmp_path, pids)},
    )  # fmt: skip
    names = ("resnet18-relu-sgd-s0", "resnet18-gelu-sgd-s0")
    for name in names:  # the board's rows, drawn from each child's epoch events
        sweep.wait_for_line(rf"{name}  running epoch 1/50  test acc [0-9.]+  \d+ img/s")
    children = child_pids(sweep.process.pid)
    assert len(children) == 2
    assert {os.getpgid(c) for c in children} == set(children)  # each leads a group of its own

    sent = time.monotonic()
    os.kill(sweep.process.pid, signal.SIGINT)  # the sweep alone, not its group
    assert sweep.wait(120) == 128 + signal.SIGINT, sweep.stderr
    assert time.monotonic() - sent < PROMPT_SECONDS, sweep.stderr
    assert not [c for c in children if alive(c)]
    # What each training started, deaf to SIGINT and SIGTERM, went with its group.
    grandchildren = [int(p) for p in pids.read_text().split()]
    assert len(grandchildren) == 2 and not [g for g in grandchildren if alive(g)]

    parent, runs = sweep_runs(tracking, "sig")
    assert sweep.lines[-1] == f"error: stopped by SIGINT: run {parent.info.run_id} is marked KILLED"
    assert parent.info.status == "KILLED"
    client = MlflowClient()
    for run in runs:
        assert run.info.status == "KILLED", run.data.tags
        # Its own process ended it, after one signal: a second would have stopped it at once.
        assert run.data.tags["failure_reason"] == "stopped by SIGINT"
        output = Path(client.download_artifacts(run.info.run_id, "sweep/train-output.txt"))
        stops = [line for line in output.read_text().splitlines() if "stopped by" in line]
        assert len(stops) == 1 and f"run {run.info.run_id} is marked KILLED" in stops[0]
    # --runs-per-gpu 2 without a GPU: the two trained at once.
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)


IGNORES_SIGINT = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
# A grandchild deaf to SIGINT and SIGTERM (ignored signals stay ignored across exec), holding
# its parent's stdout, as a compile or data worker would.
DEAF_SLEEPER = ["sh", "-c", 'trap "" INT TERM; exec sleep 300']
# Imported by every Python process started with its folder on PYTHONPATH: a training a sweep
# started (it has MLFLOW_RUN_ID) starts a real grandchild and notes its pid.
STARTS_A_GRANDCHILD = f"""
import os, subprocess
if os.environ.get("MLFLOW_RUN_ID") and os.environ.get("GRANDCHILD_PIDS"):
    worker = subprocess.Popen({DEAF_SLEEPER!r})
    with open(os.environ["GRANDCHILD_PIDS"], "a") as pids:
        pids.write(f"{{worker.pid}}\\n")
"""


def starting_grandchildren(folder: Path, pids: Path) -> dict[str, str]:
    """The environment under which each training a sweep starts starts a grandchild too."""
    hook = folder / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STARTS_A_GRANDCHILD)
    path = os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")]),
                            str(Path(__file__).resolve().parents[1])])  # fmt: skip
    return {"PYTHONPATH": path, "GRANDCHILD_PIDS": str(pids)}


def test_a_stopped_childs_grandchild_goes_with_its_group():
    children = Children()
    starts = f"import subprocess, time; subprocess.Popen({DEAF_SLEEPER!r}); time.sleep(60)"
    process = children.start(0, [sys.executable, "-c", starts])
    deadline = time.monotonic() + 30
    while not (grandchildren := child_pids(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    [grandchild] = grandchildren
    children.stop(signal.SIGINT, grace=5.0)
    assert process.wait(5) != 0
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)  # deaf to SIGINT: the group's SIGKILL ended it


@linux_only
def test_a_training_that_leaves_a_grandchild_behind_does_not_hold_the_sweep(
    tracking, mlflow_server, tmp_path
):
    """A real `train` child exits (here on a usage error) while the grandchild it started still
    holds its output pipe: the sweep is not held up reading it, and the grandchild is gone."""
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(tracking)).info.run_id
    pids = tmp_path / "grandchildren.txt"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_RUN_ID": run_id,
           **starting_grandchildren(tmp_path, pids)}  # fmt: skip
    spec = Launch(0, "left", run_id, ("--epochs", "0"), env, os.getcwd())
    started = time.monotonic()
    outcome = launch(spec, lambda event: None)
    assert time.monotonic() - started < 60
    assert outcome.status == "FAILED" and "--epochs" in outcome.reason
    [grandchild] = [int(p) for p in pids.read_text().split()]
    assert not alive(grandchild)


def test_a_child_that_ignores_the_signal_is_killed_after_the_grace_period():
    children = Children()
    process = children.start(0, [sys.executable, "-c", IGNORES_SIGINT])
    time.sleep(0.5)  # the handler is set
    started = time.monotonic()
    children.stop(signal.SIGINT, grace=1.0)
    assert process.wait(5) == -signal.SIGKILL
    assert 1.0 <= time.monotonic() - started < 5
    assert children.start(1, [sys.executable, "-c", "pass"]) is None  # none after a stop


def test_a_run_left_unfinished_by_a_stopped_child_ends_killed_with_why(tracking, mlflow_server):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(tracking)).info.run_id  # RUNNING
    spec = Launch(0, "stuck", run_id, (), {"MLFLOW_TRACKING_URI": mlflow_server.uri}, os.getcwd())
    outcome = settle(spec, -signal.SIGKILL, ["epoch 1/50 ..."], 21.0, stopped_by=signal.SIGINT)
    assert outcome.status == "KILLED"
    assert outcome.reason == "stopped by SIGINT (killed by SIGKILL: epoch 1/50 ...)"
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == outcome.reason
    again = settle(spec, -signal.SIGKILL, [], 0.0, stopped_by=signal.SIGINT)
    assert again.status == "KILLED" and client.get_run(run_id).info.end_time == run.info.end_time


def test_an_unstarted_configuration_of_a_stopped_sweep_ends_killed(tracking, mlflow_server):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(tracking)).info.run_id
    client.update_run(run_id, status="SCHEDULED")
    spec = Launch(0, "queued", run_id, (), {"MLFLOW_TRACKING_URI": mlflow_server.uri}, os.getcwd())
    outcome = settle(spec, None, [], 0.0, stopped_by=signal.SIGTERM)
    assert outcome.status == "KILLED" and outcome.reason == "stopped by SIGTERM before it started"
    assert client.get_run(run_id).info.status == "KILLED"
