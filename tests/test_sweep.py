"""`cifar-mlflow sweep`: the plan as pure functions and dry runs, then real sweeps of tiny runs
against the real tracking server (on a Ray cluster: test_cluster.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli, given_arguments
from cifar_mlflow.core.config import DEFAULTS, TrainConfig
from cifar_mlflow.sweep.command import sweep as sweep_command
from cifar_mlflow.sweep.executors import Launch, launch, local_slots
from cifar_mlflow.sweep.grid import DEFAULT_AXES, config_key, expand
from cifar_mlflow.sweep.plan import child_args
from cifar_mlflow.tracking.sweeps import CONFIG_TAG

from .conftest import PROJECT_ROOT, free_port

STUDY = {
    ("resnet18", "sigmoid", "sgd"), ("resnet18", "relu", "sgd"), ("resnet18", "leaky_relu", "sgd"),
    ("resnet18", "gelu", "sgd"), ("resnet18", "relu", "momentum"), ("resnet18", "relu", "adam"),
    ("ghost_resnet18", "relu", "sgd"),
}  # fmt: skip
# A second or two per configuration.
TINY = ("--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-system-metrics",
        "--train-limit", "20", "--test-limit", "10")  # fmt: skip


def sweep(*args: str):
    return CliRunner().invoke(cli, ["sweep", *args], catch_exceptions=False)


def factors(config: TrainConfig) -> tuple[str, str, str]:
    return config.model, config.activation, config.optimizer


# ---- the plan ----


def test_the_default_grid_is_the_study_seven_configurations():
    configs = expand(DEFAULTS, DEFAULT_AXES, (0,))
    assert len(configs) == 7
    assert {factors(c) for c in configs} == STUDY


def test_seeds_multiply_the_grid_seed_by_seed():
    configs = expand(DEFAULTS, DEFAULT_AXES, (0, 1, 2))
    assert len(configs) == 21
    # All of seed 0 first: a sweep stopped half-way holds whole studies.
    assert [c.seed for c in configs] == [0] * 7 + [1] * 7 + [2] * 7
    assert len({config_key(c) for c in configs}) == 21


def test_config_key_names_what_a_run_learns_not_where_it_is_filed():
    base = TrainConfig(epochs=1)
    assert config_key(base) == config_key(
        TrainConfig(epochs=1, experiment="x", system_metrics=False)
    )
    assert config_key(base) != config_key(TrainConfig(epochs=1, seed=1))
    assert config_key(base) != config_key(TrainConfig(epochs=1, lr=0.1))


def test_child_args_rebuild_exactly_the_config():
    config = TrainConfig(
        model="ghost_resnet18", activation="gelu", optimizer="adam", lr=3e-4, epochs=2,
        compile=True, system_metrics=False, data_dir="some dir",
    )  # fmt: skip
    train = cli.get_command(click.Context(cli), "train")
    parsed = train.make_context("train", list(child_args(config))).params
    assert (parsed.pop("resume"), parsed.pop("run_name")) == (None, None)
    assert TrainConfig(**parsed) == config


def test_runs_per_gpu_gives_each_gpu_k_processes_and_the_cpu_k_without_gpus():
    assert local_slots(None, 1, []) == [None]  # the default: one at a time
    assert local_slots(None, 2, []) == [None, None]  # no GPU: K at once on the CPU
    assert local_slots(None, 2, ["0", "1"]) == ["0", "1", "0", "1"]  # CUDA_VISIBLE_DEVICES each
    assert local_slots(3, 1, ["0", "1"]) == ["0", "1", "0"]  # --parallel: round robin


@pytest.mark.parametrize(
    "options, message",
    [
        (("--runs-per-gpu", "2", "--parallel", "2"), "give --parallel N"),
        (("--runs-per-gpu", "2", "--executor", "ray", "--gpus-per-trial", "0.5"),
         "give --gpus-per-trial G or --runs-per-gpu K"),
        (("--runs-per-gpu", "0"), "0 is not in the range x>=1"),
    ],
)  # fmt: skip
def test_runs_per_gpu_is_refused_beside_what_it_replaces(options, message):
    result = sweep("--dry-run", *options)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_dry_run_prints_the_plan_and_creates_nothing(tracking):
    result = sweep("--dry-run", "--experiment", tracking, "--sweep-id", "plan", "--epochs", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"sweep plan: 7 configurations (7 to train) in experiment '{tracking}'"
    )
    planned = [line.split()[1] for line in lines if line.startswith("  run ")]
    assert sorted(planned) == sorted(f"{m}-{a}-{o}-s0" for m, a, o in STUDY)
    assert lines[-1] == "dry run: nothing was started"
    assert MlflowClient().get_experiment_by_name(tracking) is None


def test_repeated_options_are_a_product_grid_and_seeds_multiply_it(tracking):
    result = sweep(
        "--dry-run", "--experiment", tracking, "--optimizer", "sgd", "--optimizer", "adam",
        "--lr", "0.1", "--lr", "0.01", "--model", "ghost_resnet18", "--seeds", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "8 configurations" in result.stdout
    assert "optimizer=sgd,adam x lr=0.1,0.01" in result.stdout
    planned = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("  run ")]
    assert len(planned) == 8 and all(name.startswith("ghost_resnet18-relu-") for name in planned)
    assert sorted({name[-2:] for name in planned}) == ["s0", "s1"]


def write_grid(path: Path, document: object) -> str:
    path.write_text(yaml.safe_dump(document) if not isinstance(document, str) else document)
    return str(path)


@pytest.mark.parametrize(
    "document, message",
    [
        ({"grid": {"activation": ["relu", "swish"]}},
         "grid[0].activation[1]: 'swish' is not one of 'relu', 'leaky_relu', 'gelu', 'sigmoid'"),
        ({"grid": {"learning_rate": [0.1]}}, "'learning_rate' is not a train option"),
        ({"base": {"epochs": 0}, "grid": {"lr": [0.1]}}, "base.epochs: 0 is not in the range x>=1"),
        ({"grid": [{"lr": []}]}, "grid[0].lr: no values"),
        ({"grid": {"lr": [0.1]}, "sedes": 2}, "unknown key 'sedes'"),
        ({"base": {"epochs": 1}}, "no 'grid' key"),
        ({"grid": {"experiment": ["a", "b"]}}, "the experiment is one per sweep"),
        ({"grid": {"seed": [0, 1]}, "seeds": 2}, "give the seeds once"),
        ("grid: [unclosed", "not valid YAML at line 1"),
        ("grid:\n  lr: [0.1]\n  activation: [relu]\n  lr: [0.01]\n",
         "key 'lr' is given twice (lines 2 and 4); YAML would keep only the last: give it once"),
        ("base: {epochs: 1}\ngrid: {lr: [0.1]}\nbase: {epochs: 2}\n",
         "key 'base' is given twice (lines 1 and 3)"),
        ("grid:\n  - {lr: [0.1], lr: [0.2]}\n", "key 'lr' is given twice (lines 2 and 2)"),
    ],
)  # fmt: skip
def test_a_bad_grid_file_names_the_bad_key_or_value(tmp_path, document, message):
    grid = write_grid(tmp_path / "grid.yaml", document)
    result = sweep("--grid", grid, "--dry-run")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: grid file {grid}: ")
    assert message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_grid_file_and_repeated_options_are_refused_together(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", {"grid": {"lr": [0.1]}})
    result = sweep("--grid", grid, "--activation", "relu", "--activation", "gelu", "--dry-run")
    assert result.exit_code == 2
    assert "--activation is repeated and --grid is given" in result.stderr


def test_the_example_grid_file_is_the_default_study(tracking):
    result = sweep(
        "--dry-run", "--experiment", tracking, "--grid", str(PROJECT_ROOT / "grids/study.yaml")
    )
    assert result.exit_code == 0, result.output
    assert "7 configurations" in result.stdout


def test_an_unreachable_tracking_server_fails_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CIFAR_MLFLOW_SERVER_WAIT", "1")  # default 10 s: tests/test_cli_errors.py
    start = time.monotonic()
    result = sweep("--dry-run")
    assert result.exit_code == 1
    assert "is unreachable" in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr
    assert time.monotonic() - start < 30


needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason='Ray is an extra: pip install -e ".[ray]"'
)


@needs_ray
def test_an_unreachable_ray_cluster_fails_fast_and_leaves_no_run(tracking, image_folder):
    start = time.monotonic()
    result = sweep("--experiment", tracking, "--data-dir", str(image_folder), *TINY,
                   "--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}")  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Ray cluster 127.0.0.1:")
    assert "is unreachable" in result.stderr
    assert time.monotonic() - start < 30
    assert MlflowClient().get_experiment_by_name(tracking) is None


def test_the_mlproject_sweep_entry_point_passes_every_parameter_as_a_sweep_option():
    spec = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]["sweep"]
    options = {o[2:].replace("-", "_") for p in sweep_command.params for o in p.opts}
    assert set(spec["parameters"]) <= options
    assert set(spec["parameters"]) >= {
        "grid",
        "seeds",
        "sweep_id",
        "executor",
        "epochs",
        "data_dir",
    }
    for name, param in spec["parameters"].items():
        assert param["default"] == "", name
        assert f"--{name.replace('_', '-')} {{{name}}}" in spec["command"], name
    # What the entry point hands on: parameters left at "" are not given at all.
    assert given_arguments(["--grid", "", "--epochs", "1", "--dry-run", "true", "--seeds", ""]) == [
        "--epochs", "1", "--dry-run", "true"]  # fmt: skip


def test_a_child_that_dies_before_its_run_starts_leaves_it_failed_with_its_error(
    tracking, mlflow_server
):
    client = MlflowClient()
    experiment_id = client.create_experiment(tracking)
    run_id = client.create_run(experiment_id).info.run_id
    client.update_run(run_id, status="SCHEDULED")
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_RUN_ID": run_id}
    spec = Launch(0, "broken", run_id, ("--epochs", "none"), env, os.getcwd())
    epochs = []
    outcome = launch(spec, lambda *a: epochs.append(a))
    assert outcome.status == "FAILED" and outcome.run_id == run_id and not epochs
    assert "'none' is not a valid integer" in outcome.reason
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == outcome.reason
    output = client.download_artifacts(run_id, "sweep/train-output.txt")
    assert "Invalid value for '--epochs'" in Path(output).read_text()


# ---- real sweeps ----


def sweep_runs(
    experiment: str, sweep_id: str
) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.sweep_id = '{sweep_id}'",
        output_format="list",
    )
    [parent] = [r for r in runs if r.data.tags.get("job") == "sweep"]
    children = [r for r in runs if CONFIG_TAG in r.data.tags]
    return parent, children


def failing_grid(tmp_path: Path, good: Path, late: Path, **base) -> str:
    """Two configurations; the second reads `late`, which holds no images yet, so it fails."""
    return write_grid(tmp_path / "grid.yaml", {
        "base": base,
        "grid": [{"data_dir": [str(good)]}, {"data_dir": [str(late)], "activation": ["gelu"]}],
    })  # fmt: skip


@pytest.mark.slow
def test_a_sweep_nests_its_runs_retries_the_failed_one_and_then_runs_nothing(
    tracking, image_folder, tmp_path
):
    late = tmp_path / "late"
    (late / "train").mkdir(parents=True)
    grid = failing_grid(tmp_path, image_folder, late)
    # --runs-per-gpu 2 on the CPU: both configurations at once (the run is startup-bound).
    args = ("--grid", grid, "--experiment", tracking, "--sweep-id", "s1", *TINY,
            "--runs-per-gpu", "2", "--output-dir", str(tmp_path / "report"))  # fmt: skip

    first = sweep(*args)
    assert first.exit_code == 1
    assert (
        "error: 1 of 2 configurations did not finish: run the same command with --sweep-id s1"
        in first.stderr
    )
    assert "resnet18-gelu-sgd-s0  failed" in first.stderr and "no class folders" in first.stderr
    parent, children = sweep_runs(tracking, "s1")
    assert parent.info.status == "FAILED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_name = {c.info.run_name: c for c in children}
    assert by_name["resnet18-relu-sgd-s0"].info.status == "FINISHED"
    assert by_name["resnet18-relu-sgd-s0"].data.params["runs_per_device"] == "2"  # both at once
    failed = by_name["resnet18-gelu-sgd-s0"]
    assert (
        failed.info.status == "FAILED" and "no class folders" in failed.data.tags["failure_reason"]
    )
    assert (tmp_path / "report" / "report.md").exists()  # the report of what did finish

    shutil.rmtree(late)
    shutil.copytree(image_folder, late)
    second = sweep(*args)
    assert second.exit_code == 0, second.output
    assert "  skip   resnet18-relu-sgd-s0  lr 0.01" in second.stdout
    rerun = f"  rerun  resnet18-gelu-sgd-s0  lr 0.01      FAILED in run {failed.info.run_id}"
    assert rerun in second.stdout
    assert "resnet18-gelu-sgd-s0  running epoch 1/1" in second.stderr
    parent_again, children = sweep_runs(tracking, "s1")
    assert parent_again.info.run_id == parent.info.run_id and parent_again.info.status == "FINISHED"
    assert "failure_reason" not in parent_again.data.tags
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    retried = MlflowClient().get_run(failed.info.run_id)  # the same run, now finished
    assert retried.info.status == "FINISHED" and "failure_reason" not in retried.data.tags
    assert retried.data.params["runs_per_device"] == "1"  # the one configuration left: alone
    assert retried.data.params["activation"] == "gelu" and "final_test_acc" in retried.data.metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"report.md", "table.csv"} <= artifacts
    assert parent_again.data.params["sweep.configurations"] == "2"
    assert parent_again.data.tags["compare.runs"] == "2"

    third = sweep(*args)
    assert third.exit_code == 0, third.output
    assert "nothing to train" in third.stdout
    assert len(mlflow.search_runs(experiment_names=[tracking], output_format="list")) == 3

    compared = CliRunner().invoke(cli, ["compare", "--experiment", tracking, "--sweep", "s1",
                                        "--output-dir", str(tmp_path / "compare")])  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert "compared 2 runs in 2 configurations" in compared.stdout


@pytest.mark.slow
def test_mlflow_run_sweep_makes_its_run_the_parent(tracking, mlflow_server, image_folder, tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", {"grid": {"activation": ["gelu"]}})
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        # `python` in the entry point's command: this interpreter, with the project installed.
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }
    params = {"grid": grid, "sweep_id": "mp", "data_dir": str(image_folder), "epochs": "1",
              "batch_size": "16", "device": "cpu", "system_metrics": "false", "train_limit": "20",
              "test_limit": "10",
              "output_dir": str(tmp_path / "report")}  # fmt: skip
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "sweep",
               "--env-manager", "local", "--experiment-name", tracking]  # fmt: skip
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]

    parent, [child] = sweep_runs(tracking, "mp")
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep"  # the run `mlflow run` made
    assert (
        parent.info.status == "FINISHED" and parent.data.params["sweep.grid"] == "activation=gelu"
    )
    assert child.info.status == "FINISHED" and child.data.params["activation"] == "gelu"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["epochs"] == "1"
    assert "report.md" in {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}


def test_a_key_a_yaml_merge_brings_in_may_be_overridden(tmp_path):
    from cifar_mlflow.sweep.command import TRAIN_OPTIONS
    from cifar_mlflow.sweep.grid import load_grid_file

    grid = write_grid(tmp_path / "grid.yaml", "base:\n  <<: {epochs: 2, lr: 0.1}\n  lr: 0.01\n"
                                              "grid: {activation: [relu, gelu]}\n")  # fmt: skip
    assert dict(load_grid_file(grid, TRAIN_OPTIONS).base) == {"epochs": 2, "lr": 0.01}
