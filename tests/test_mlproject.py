"""MLproject agrees with the CLI, conda.yaml with pyproject, README's test command with CI, and
`mlflow run` really trains."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import click
import mlflow
import pytest
import tomllib
import yaml
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.core.config import TrainConfig

from .conftest import PROJECT_ROOT

MLPROJECT = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
TRAIN_ENTRY_POINTS = ("main", "train")


def cli_options(command: click.Command) -> dict[str, click.Option]:
    """Value-taking options by MLproject parameter name (`--data-dir` -> data_dir); flag aliases
    such as --no-system-metrics excluded."""
    return {
        p.opts[0].removeprefix("--").replace("-", "_"): p
        for p in command.params
        if isinstance(p, click.Option) and not p.is_flag
    }


# (entry point, click command, options that are not MLproject parameters). --resume names a run
# to continue and --run-name names it, which `mlflow run --run-id` and `--run-name` do for
# projects. The sweep entry point passes "" for "not given" and has its own test in test_sweep.py.
MIRRORED = [("main", "train", {"resume", "run_name"}), ("train", "train", {"resume", "run_name"}),
            ("compare", "compare", set()), ("export", "export", set())]  # fmt: skip


@pytest.mark.parametrize("entry_point, command, not_parameters", MIRRORED)
def test_mlproject_parameters_match_the_command_options(entry_point, command, not_parameters):
    options = cli_options(cli.get_command(click.Context(cli), command))
    spec = MLPROJECT["entry_points"][entry_point]
    assert set(options) - set(spec["parameters"]) == not_parameters
    assert set(spec["parameters"]) <= set(options)
    for name, param in spec["parameters"].items():
        option = options[name]
        if not (param["default"] == "" and option.default is None):  # "": not given (dropped)
            assert option.type.convert(str(param["default"]), option, None) == option.default, name
        assert f"--{name.replace('_', '-')} {{{name}}}" in spec["command"], name
    assert spec["command"].startswith(f"python -m entrypoints.{command} ")


def test_every_choice_is_offered_by_help_and_listed_in_readme():
    """A choice added to core.config's registries shows in `train --help` and in README's row of
    its parameter, in every entry point, with no other edit to the options."""
    from click.testing import CliRunner

    from cifar_mlflow.core.config import CHOICES

    shown = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    rows = {line.split("|")[1].strip().strip("`"): line
            for line in (PROJECT_ROOT / "README.md").read_text().splitlines()
            if line.startswith("| `")}  # fmt: skip
    for field, names in CHOICES.items():
        assert f"[{'|'.join(names)}]" in shown, field
        assert all(f"`{name}`" in rows[field] for name in names if name != "auto"), field


def test_train_parameters_are_the_config_fields():
    spec = MLPROJECT["entry_points"]["train"]
    assert set(spec["parameters"]) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_entry_points_main_and_train_are_the_same_job():
    main, train = (MLPROJECT["entry_points"][e] for e in TRAIN_ENTRY_POINTS)
    assert main == train


def test_conda_env_installs_the_project_dependencies():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    conda = yaml.safe_load((PROJECT_ROOT / MLPROJECT["conda_env"]).read_text())
    assert "python=3.11" in conda["dependencies"]
    [pip] = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    assert sorted(pip) == sorted(pyproject["project"]["dependencies"])


@pytest.mark.slow
def test_mlflow_run_trains_and_tracks(image_folder, tracking, mlflow_server):
    """One layout here: both are trained through the CLI in tests/test_train.py."""
    data_dir = image_folder
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        # `python` in the entry point's command must be this interpreter, with the project installed.
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }
    params = {
        "activation": "sigmoid", "epochs": "1", "batch_size": "16", "data_dir": str(data_dir),
        "device": "cpu", "system_metrics": "false",
    }  # fmt: skip
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local",
               "--experiment-name", tracking]  # fmt: skip
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    [run] = mlflow.search_runs(experiment_names=[tracking], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params["activation"] == "sigmoid" and run.data.tags["activation"] == "sigmoid"
    assert run.data.params["epochs"] == "1"
    assert set(run.data.metrics) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr",
                                     "epoch_seconds", "images_per_second", "final_test_acc"}  # fmt: skip
    # `mlflow run` made this run and our code logged into it, rather than into a second run,
    # named for what it trains instead of MLflow's random name.
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.info.run_name == "resnet18-sigmoid-sgd-s0"
    experiment = mlflow.get_experiment_by_name(tracking)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # What the user sees: its curves and description, one line at the end, no library noise.
    assert "curves.png" in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert "**Best epoch 1** of 1, chosen on validation" in run.data.tags["mlflow.note.content"]
    assert f"run {run.info.run_id} finished: resnet18-sigmoid-sgd-s0 in " in result.stdout
    # (`mlflow run` itself, the parent process, prints its own "View run" link and INFO lines.)
    for noise in ("No complete tensor", "system_metrics_monitor", "Traceback", "warning:"):
        assert noise not in result.stdout + result.stderr, noise
    assert run.data.params["model_params"] == "11173962"


def test_readme_test_command_is_the_one_ci_runs():
    """A newcomer copies README's test command; CI (.ci/run) must run the same one."""
    readme = (PROJECT_ROOT / "README.md").read_text().split("Run the tests", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", readme, re.S)[1]
    command = block.split("&&")[-1].strip()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert command.startswith("python -m pytest") and ci[-1] == command
