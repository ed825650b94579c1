"""Past one machine: README's team setup, run for real. A tracking server on PostgreSQL with an
artifact store (conftest's postgres_mlflow_server), a Ray cluster of a head and two worker nodes
(tests/cluster.py), then `sweep` and `tune` on the cluster through the real command line: the
trials spread over the nodes (their runs' `ray_node_id` tags differ), every run is logged, the
report is made. What a node could not reach is refused before anything starts, in one line."""

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
# README's sweep and tune on the cluster, with the tiny settings (and two configurations, two
# trials: one per worker node at once).
SWEEP = ("sweep", "--executor", "ray", "--ray-address", "{head}", "--data-dir", "{data}",
         "--seeds", "1", "--activation", "relu", "--activation", "gelu", *TINY)  # fmt: skip
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
               exit_code: int = 0) -> tuple[list[mlflow.entities.Run], str]:  # fmt: skip
    """The real command line, where README's team setup runs it (the tracking server's URI and
    the cluster's token in the environment), into an experiment of its own: its runs, and what
    it printed on stderr."""
    experiment = f"team-{uuid.uuid4().hex[:8]}"
    argv = [a.format(head=cluster.address, data=data) for a in args]
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
def test_a_sweep_spreads_over_the_nodes_and_every_run_reaches_the_server(
    cluster, postgres_mlflow_server, image_folder, tmp_path
):
    found, _ = on_cluster(SWEEP, cluster, postgres_mlflow_server, image_folder,
                          "--sweep-id", "spread", "--output-dir", str(tmp_path))  # fmt: skip
    children = [r for r in found if CONFIG_TAG in r.data.tags]
    [parent] = [r for r in found if r.data.tags.get("job") == "sweep"]
    assert sorted(r.data.params["activation"] for r in children) == ["gelu", "relu"]
    assert {r.info.status for r in [parent, *children]} == {"FINISHED"}
    assert len({r.data.tags[NODE_TAG] for r in children}) == 2  # two trials, two nodes
    assert "final_test_acc" in children[0].data.metrics and NODE_TAG not in parent.data.tags
    assert "report.md" in {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}
    assert (tmp_path / "report.md").exists()


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


@pytest.mark.slow
@needs_ray
def test_a_failed_trial_does_not_stop_the_others_and_progress_comes_back(
    cluster, mlflow_server, image_folder, tmp_path
):
    late = tmp_path / "late"  # holds no images: the gelu configuration fails on its node
    (late / "train").mkdir(parents=True)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"grid": [{"data_dir": [str(image_folder)]},
                                             {"data_dir": [str(late)], "activation": ["gelu"]}]}))
    found, stderr = on_cluster(
        ("sweep", "--executor", "ray", "--ray-address", "{head}", "--grid", str(grid), *TINY),
        cluster, mlflow_server, image_folder, "--sweep-id", "r1",
        "--output-dir", str(tmp_path / "report"), exit_code=1,
    )  # fmt: skip
    assert "1 of 2 configurations did not finish" in stderr, stderr[-3000:]
    [parent] = [r for r in found if r.data.tags.get("job") == "sweep"]
    by_name = {r.info.run_name: r for r in found if CONFIG_TAG in r.data.tags}
    assert by_name["resnet18-relu-sgd-s0"].info.status == "FINISHED"
    assert by_name["resnet18-gelu-sgd-s0"].info.status == "FAILED"
    assert "no class folders" in by_name["resnet18-gelu-sgd-s0"].data.tags["failure_reason"]
    assert {r.data.tags["mlflow.parentRunId"] for r in by_name.values()} == {parent.info.run_id}
    assert "resnet18-relu-sgd-s0  running epoch 1/1" in stderr  # progress came back from Ray
    assert "report.md" in {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}


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
