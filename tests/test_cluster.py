"""Past one machine: README's team setup, run for real. A tracking server on PostgreSQL with an
artifact store (conftest's postgres_mlflow_server), a Ray cluster of a head and two worker nodes
(tests/cluster.py), then `sweep` and `tune` on the cluster through the real command line: the
trials spread over the nodes (their runs' `ray_node_id` tags differ), a trial that fails stops
no other, every run is logged, the report is made. What a node could not reach is refused
before anything starts, in one line."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.sweep.cluster import NODE_TAG
from cifar_mlflow.tracking.sweeps import CONFIG_TAG
from cifar_mlflow.tracking.tuning import CONFIG_JOB, PARENT_TAG, TRIAL_TAG

from .cluster import RayCluster
from .conftest import PROJECT_ROOT

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason='Ray is an extra: pip install -e ".[ray]"'
)
TINY = ("--train-limit", "40", "--val-size", "10", "--test-limit", "10", "--epochs", "1",
        "--batch-size", "16", "--device", "cpu", "--no-system-metrics")  # fmt: skip
# README's sweep and tune on the cluster, with the tiny settings: the sweep's grid has three
# configurations (one per worker node at once), one that fails on its node; the tune two trials.
SWEEP = ("sweep", "--executor", "ray", "--ray-address", "{head}", "--data-dir", "{data}",
         "--seeds", "1", "--grid", "{grid}", *TINY)  # fmt: skip
TUNE = ("tune", "--executor", "ray", "--ray-address", "{head}", "--data-dir", "{data}",
        "--trials", "2", "--optimizer", "adam", *TINY)  # fmt: skip


# ---- refused before anything starts: no cluster needed, none is reached ----


@pytest.mark.parametrize("command", ["sweep", "tune"])
@pytest.mark.parametrize(
    "uri, data_dir, message",
    [("sqlite:///mlflow.db", "/data", "trials on the Ray cluster 127.0.0.1:9 cannot open the "
                                      "tracking URI 'sqlite:///mlflow.db': only this machine can"),
     ("mlruns", "/data", "trials on the Ray cluster 127.0.0.1:9 cannot open the tracking URI "
                         "'mlruns'"),
     (None, "data", "--data-dir 'data' is relative: each node of the Ray cluster 127.0.0.1:9 "
                    "would read it from its own working directory")],
)  # fmt: skip
def test_what_a_node_cannot_reach_is_refused_in_one_line(
    command, uri, data_dir, message, tracking, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    if uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(cli, [command, "--experiment", tracking, "--data-dir", data_dir,
                                      "--executor", "ray", "--ray-address", "127.0.0.1:9"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no store opened: no mlflow.db, no mlruns/
    assert MlflowClient().get_experiment_by_name(tracking) is None


# ---- on a real cluster ----


@pytest.fixture(scope="module")
def cluster():
    # A short folder of its own: Ray's sockets live below it, and a socket's path may not exceed
    # 107 bytes (pytest's own temporary folders can be deeper than that leaves room for).
    root = Path(tempfile.mkdtemp(prefix="ray-"))
    started = RayCluster(root, workers=2)
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(root, ignore_errors=True)


def on_cluster(args: tuple[str, ...], cluster: RayCluster, server, data: Path, *extra: str,
               grid: Path | None = None,
               exit_code: int = 0) -> tuple[list[mlflow.entities.Run], str]:  # fmt: skip
    """The real command line, where README's team setup runs it (the tracking server's URI and
    the cluster's token in the environment), into an experiment of its own: its runs, and what
    it printed on stderr."""
    experiment = f"team-{uuid.uuid4().hex[:8]}"
    argv = [a.format(head=cluster.address, data=data, grid=grid) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", *argv, "--experiment", experiment, *extra],
        env={**cluster.env, "MLFLOW_TRACKING_URI": server.uri}, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == exit_code, result.stderr[-3000:]
    mlflow.set_tracking_uri(server.uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list"), result.stderr


@pytest.mark.slow
@needs_ray
def test_a_sweep_spreads_over_the_nodes_a_failed_trial_stops_no_other_and_runs_reach_the_server(
    cluster, postgres_mlflow_server, image_folder, tmp_path
):
    late = tmp_path / "late"  # holds no images: the sigmoid configuration fails on its node
    (late / "train").mkdir(parents=True)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"grid": [{"activation": ["relu", "gelu"]},
                                             {"activation": ["sigmoid"], "data_dir": [str(late)]}]}))
    found, stderr = on_cluster(SWEEP, cluster, postgres_mlflow_server, image_folder,
                               "--sweep-id", "spread", "--output-dir", str(tmp_path / "report"),
                               grid=grid, exit_code=1)  # fmt: skip
    assert "1 of 3 configurations did not finish" in stderr, stderr[-3000:]
    [parent] = [r for r in found if r.data.tags.get("job") == "sweep"]
    by_name = {r.info.run_name: r for r in found if CONFIG_TAG in r.data.tags}
    assert {name: run.info.status for name, run in by_name.items()} == {
        "resnet18-relu-sgd-s0": "FINISHED", "resnet18-gelu-sgd-s0": "FINISHED",
        "resnet18-sigmoid-sgd-s0": "FAILED"}  # fmt: skip
    failed = by_name["resnet18-sigmoid-sgd-s0"]
    assert "no class folders" in failed.data.tags["failure_reason"]
    # three trials, one worker node each at a time: both nodes trained
    assert len({r.data.tags[NODE_TAG] for r in by_name.values()}) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in by_name.values()} == {parent.info.run_id}
    assert "final_test_acc" in by_name["resnet18-gelu-sgd-s0"].data.metrics
    assert NODE_TAG not in parent.data.tags
    assert re.search(r"resnet18-relu-sgd-s0 +running epoch 1/1", stderr)  # progress, from Ray
    # the report of what did finish, logged and written
    assert "report.md" in {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}
    assert (tmp_path / "report" / "report.md").exists()


@pytest.mark.slow
@needs_ray
def test_a_tune_spreads_its_trials_over_the_nodes(
    cluster, postgres_mlflow_server, image_folder, tmp_path
):
    found, _ = on_cluster(TUNE, cluster, postgres_mlflow_server, image_folder,
                          "--tune-id", "spread", "--storage", str(tmp_path / "study.db"))  # fmt: skip
    trials = [r for r in found if TRIAL_TAG in r.data.tags]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    assert len({r.data.tags[NODE_TAG] for r in trials}) == 2
    # Each trial, wherever it ran, nests under its configuration's run, which holds the best lr.
    [configuration] = [r for r in found if r.data.tags.get("job") == CONFIG_JOB]
    assert {r.data.tags[PARENT_TAG] for r in trials} == {configuration.info.run_id}
    assert "tuned_lr" in configuration.data.tags


# ---- README's team setup is what the suite runs ----


def readme_team_setup() -> list[str]:
    """The command lines of README's team setup, without comments."""
    section = (PROJECT_ROOT / "README.md").read_text().split("## Team setup", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], re.S)[1]
    return [line.split("  #")[0].strip() for line in block.splitlines()
            if line.strip() and not line.startswith("#")]  # fmt: skip


def program_and_options(argv: list[str]) -> tuple[str, set[str]]:
    """('mlflow server', {'--port', ...}) for an argv; a program by its file name, `python -m
    cifar_mlflow` and `python -m mlflow` by the command they run."""
    words = [Path(argv[0]).name, *argv[1:]]
    if words[0].startswith("python") and words[1] == "-m":
        words = [words[2].replace("_", "-"), *words[3:]]
    has_command = words[0] in ("mlflow", "ray", "cifar-mlflow")
    program = " ".join(words[:2]) if has_command else words[0]
    return program, {w.split("=")[0] for w in words if w.startswith("--")}


@pytest.mark.slow
@needs_ray
def test_every_team_setup_command_in_the_readme_is_one_the_suite_runs(
    cluster, postgres_server, postgres_mlflow_server
):
    ran = [*postgres_server.commands, postgres_mlflow_server.command(), *cluster.commands,
           ["cifar-mlflow", *SWEEP], ["cifar-mlflow", *TUNE]]  # fmt: skip
    environment = {*cluster.env, *postgres_mlflow_server.env, "MLFLOW_TRACKING_URI"}
    suite = [program_and_options(argv) for argv in ran]
    lines = readme_team_setup()
    assert len(lines) == 11
    for line in lines:
        words = shlex.split(line.removeprefix("sudo -u postgres "))
        if words[0] == "export":
            assert {w.split("=")[0] for w in words[1:]} <= environment, line
            continue
        while re.match(r"^[A-Z_]+=", words[0]):  # VAR=value command ...
            assert words.pop(0).split("=")[0] in environment, line
        program, options = program_and_options(words)
        assert any(p == program and options <= o for p, o in suite), line
    store = postgres_mlflow_server.command()
    assert store[store.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://mlflow@")
    assert "postgresql+psycopg://mlflow@" in " ".join(lines)
