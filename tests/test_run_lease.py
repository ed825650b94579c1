"""One run, one writer (tracking/lease.py), with real processes on the real server: two resumes of
one killed run started at once, exactly one trains; a holder that died (a dead pid on this host,
a heartbeat gone stale on another) does not lock the run; a live one does, and the refused
process leaves the run as it was."""

from __future__ import annotations

import os
import signal
import socket
import time

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.testing.runs import log_synthetic_run
from cifar_mlflow.tracking import lease
from cifar_mlflow.tracking.lease import Holder, LeaseLost, RunHeld, WriterLease, heartbeat_tag
from cifar_mlflow.tracking.runs import FAILURE_TAG

from .conftest import tiny_train_args
from .processes import PER_EPOCH_KEYS, SMALL_RUN, TrainingProcess, steps, wait_for_checkpoint

HOST = socket.gethostname()


def held_run(experiment: str, claim: str | None = None, heartbeat: str | None = None) -> str:
    """A RUNNING run with a training run's params (so `--resume` reads its settings), claimed
    as `writer.1` = `claim` with heartbeat `heartbeat`, as another process would leave it."""
    params = MlflowClient().get_run(log_synthetic_run(experiment)).data.params
    client = MlflowClient()
    run_id = client.create_run(mlflow.get_experiment_by_name(experiment).experiment_id).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    if claim:
        client.log_param(run_id, "writer.1", claim)
    if heartbeat:
        client.set_tag(run_id, heartbeat_tag(1), heartbeat)
    return run_id


@pytest.mark.slow
def test_two_resumes_of_one_killed_run_at_once_exactly_one_trains(image_folder, tracking):
    args = tiny_train_args(image_folder, tracking, "--epochs", "3", "--seed", "5", *SMALL_RUN,
                           "--checkpoint-every", "1")  # fmt: skip
    killed = TrainingProcess(args)
    run_id = killed.run_id()
    wait_for_checkpoint(run_id, 1)
    killed.process.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    # The dead holder's heartbeat is fresh: only its pid, gone on this host, frees the run.
    first = Holder.of(MlflowClient().get_run(run_id))
    assert (first.host, first.pid) == (HOST, killed.process.pid)
    assert time.time() - max(first.since, first.heartbeat or 0) < lease.STALE_SECONDS

    resumes = [TrainingProcess(["train", "--resume", run_id]) for _ in range(2)]
    codes = [p.wait(600) for p in resumes]
    assert sorted(codes) == [0, 1], [p.stderr for p in resumes]
    winner, loser = (resumes[0], resumes[1]) if codes[0] == 0 else (resumes[1], resumes[0])
    errors = [line for line in loser.lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in loser.stderr, loser.stderr
    assert f"run {run_id} is being trained by another process ({HOST} pid " \
           f"{winner.process.pid}," in errors[0]  # fmt: skip

    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and FAILURE_TAG not in run.data.tags
    for key in PER_EPOCH_KEYS:
        assert steps(run_id, key) == [1, 2, 3], key
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert sorted(m.name for m in models if m.source_run_id == run_id) == ["best", "final"]
    holder = Holder.of(run)
    assert (holder.generation, holder.pid, holder.released) == (2, winner.process.pid, True)


def test_a_live_holder_refuses_a_resume_in_one_line_and_the_run_is_left_alone(tracking):
    claim = f"other-host pid 4242 since {time.time():.3f} token"
    run_id = held_run(tracking, claim, f"{time.time():.3f}")
    result = CliRunner().invoke(cli, ["train", "--resume", run_id])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "being trained by another process (other-host pid 4242, last heard" in lines[0]
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "RUNNING" and FAILURE_TAG not in run.data.tags
    assert "writer.2" not in run.data.params


@pytest.mark.parametrize("who", ["stale heartbeat on another host", "dead pid on this host"])
def test_a_holder_that_died_does_not_lock_the_run(who, tracking):
    now = time.time()
    if who == "dead pid on this host":  # a pid no process has: beyond the kernel's maximum
        claim, beat = f"{HOST} pid {2**22 + 1} since {now:.3f} token", f"{now:.3f}"
    else:
        stale = now - lease.STALE_SECONDS - 5
        claim, beat = f"other-host pid 4242 since {stale:.3f} token", f"{stale:.3f}"
    run_id = held_run(tracking, claim, beat)
    with WriterLease() as mine:
        mine.take(run_id)
        holder = Holder.of(MlflowClient().get_run(run_id))
        assert (holder.generation, holder.host, holder.pid) == (2, HOST, os.getpid())
        with pytest.raises(RunHeld):  # live now: nobody else gets it
            WriterLease().take(run_id)
    assert MlflowClient().get_run(run_id).data.tags[heartbeat_tag(2)] == lease.RELEASED
    with WriterLease() as next_one:  # released: free at once
        next_one.take(run_id)


def test_a_holder_overtaken_while_silent_stops_at_its_next_step(tracking, monkeypatch):
    """A holder that could not reach the server for longer than the stale time may find another
    writer when it is back: it stops, and neither marks nor releases the run."""
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.2)
    run_id = held_run(tracking)
    with WriterLease() as mine:
        mine.take(run_id)
        MlflowClient().log_param(run_id, "writer.2", f"other-host pid 7 since {time.time()} x")
        with pytest.raises(LeaseLost, match="taken over by other-host pid 7"):
            for _ in mine.guard(iter(lambda: time.sleep(0.05), 1)):
                pass
    assert MlflowClient().get_run(run_id).data.tags.get(heartbeat_tag(1)) != lease.RELEASED


def test_of_many_claims_at_the_same_moment_exactly_one_wins(tracking):
    """The claim is a param the server's store sets once: racing claims, released together by a
    barrier, get one winner; the others read who it was."""
    import threading

    run_id = held_run(tracking)
    leases = [WriterLease() for _ in range(8)]
    barrier, outcomes = threading.Barrier(len(leases)), {}

    def claim(i: int) -> None:
        barrier.wait()
        try:
            leases[i].take(run_id)
            outcomes[i] = "won"
        except RunHeld as e:
            outcomes[i] = str(e)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert list(outcomes.values()).count("won") == 1, outcomes
        assert all(f"({HOST} pid {os.getpid()}," in o for o in outcomes.values() if o != "won")
        assert Holder.of(MlflowClient().get_run(run_id)).generation == 1
    finally:
        for lease_ in leases:
            lease_.__exit__(None, None, None)


def test_a_release_that_never_reached_the_server_does_not_lock_the_run_for_this_process(tracking):
    """The server was down when the lease was released (the run resumes once it is back, in
    this same process): the claim is this process's, which no longer holds it."""
    run_id = held_run(tracking)
    with WriterLease() as first:
        first.take(run_id)
    MlflowClient().delete_tag(run_id, heartbeat_tag(1))  # as if the release was never sent
    with WriterLease() as second:
        second.take(run_id)
        assert second.generation == 2
