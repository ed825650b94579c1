"""`cifar-mlflow tune`: the search's study against Optuna itself (pruning, resuming), bad input
refused in one line before any run, and real tiny tunes on the real tracking server: one killed
by a real SIGTERM mid-trial then resumed (nested runs, a diverging learning rate failed without
stopping the tune, no trial twice, the summary, a rerun that adds nothing), `sweep --tuned`, and
the same on a local Ray."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

pytest.importorskip("optuna", reason="tune needs Optuna: pip install -e '.[tune]'")

from cifar_mlflow.cli import cli  # noqa: E402 (after the skip: search.py imports optuna)
from cifar_mlflow.core.engine import EpochMetrics, StopTraining  # noqa: E402
from cifar_mlflow.tracking.runs import FAILURE_TAG, TUNED_FROM_TAG  # noqa: E402
from cifar_mlflow.tracking.tuning import CONFIG_JOB, PARENT_TAG, TRIAL_TAG  # noqa: E402
from cifar_mlflow.tune.command import tune as tune_command  # noqa: E402
from cifar_mlflow.tune.ranges import first_prunable_epoch  # noqa: E402
from cifar_mlflow.tune.search import EpochWatch, Search, Space, open_storage  # noqa: E402

from .conftest import PROJECT_ROOT, free_port, tracking_on  # noqa: E402
from .test_architecture import loaded_by  # noqa: E402

# 30 training and 10 validation images, 10 test images, one epoch: a trial is one or two
# training steps (a few seconds; trials log no models).
TINY = ("--train-limit", "40", "--val-size", "10", "--test-limit", "10", "--epochs", "1",
        "--batch-size", "16", "--device", "cpu", "--no-system-metrics")  # fmt: skip
# TPE draws at random before it has 10 trials, and search.Search seeds trial n with seed + n: with
# --seed 113 the first draws sit at 0.852, 0.152 and 0.196 of the log range. Over 1e-10..3e38
# (the top is float32's range, as --lr allows) that is 2e31 (the loss is NaN within the first
# epoch: diverged), 0.0022 and 0.32 (both complete).
SEED = "113"
DIVERGING_RANGE = "1e-10,3e38"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def metrics(epoch: int, val_acc: float) -> EpochMetrics:
    return EpochMetrics(epoch, 1.0, 0.1, 1.0, 0.1, 0.01, 1.0, 100.0, 1.0, val_acc)


# ---- the study, with Optuna itself ----


def search(path: Path, tune_id: str = "t", prune_after: int = 1, epochs: int = 2) -> Search:
    return Search(open_storage(path, tune_id), tune_id, "config", Space((1e-4, 1.0)),
                  {"epochs": epochs}, 0, prune_after, epochs)  # fmt: skip


@pytest.mark.parametrize(("epochs", "first_prunable"), [(3, 2), (12, 3), (40, 10)])
def test_a_trial_below_the_median_is_pruned_only_after_the_warm_up(tmp_path, epochs,
                                                                    first_prunable):  # fmt: skip
    assert first_prunable_epoch(epochs) == first_prunable  # a quarter of the budget, at least 2
    study = search(tmp_path / "study.db", epochs=epochs)
    first, _ = study.ask()
    watch = EpochWatch(first, epochs)
    for epoch in range(1, epochs + 1):
        watch(metrics(epoch, 0.5))
    study.end(first, "complete", 0.5)
    second, _ = study.ask()
    watch = EpochWatch(second, epochs)
    for epoch in range(1, first_prunable):  # a slow starter, far below the median: not yet
        watch(metrics(epoch, 0.1))
    with pytest.raises(StopTraining, match=f"pruned at epoch {first_prunable}"):
        watch(metrics(first_prunable, 0.1))
    assert watch.pruned_at == first_prunable
    study.end(second, "pruned")
    assert study.counted() == 2


def test_tune_help_states_the_warm_up():
    text = " ".join(invoke("tune", "--help").output.split())
    assert "no trial is pruned before epoch max(2, ceil(epochs/4))" in text


def test_a_trial_left_running_is_failed_on_resume_and_not_counted(tmp_path):
    path = tmp_path / "study.db"
    _, drawn = search(path).ask()  # its process dies here: the trial stays RUNNING
    resumed = search(path)
    assert resumed.fail_interrupted() == 1 and resumed.counted() == 0
    [trial] = resumed.trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["outcome"] == "interrupted"
    _, redrawn = resumed.ask()
    assert redrawn != drawn  # seeded by the trial count: the resumed sampler draws anew


def test_a_study_file_of_another_tune_or_other_settings_is_refused(tmp_path):
    path = tmp_path / "study.db"
    search(path, "first")
    with pytest.raises(Exception, match="holds the studies of tune first, not second"):
        open_storage(path, "second")
    with pytest.raises(Exception, match="started with other settings"):
        Search(open_storage(path, "first"), "first", "config", Space((1e-3, 1.0)), {"epochs": 2},
               0, 1, 2)  # fmt: skip


# ---- the command line ----


def test_tune_help_loads_neither_torch_nor_mlflow():
    code = (
        "import contextlib, io\nfrom cifar_mlflow.cli import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli(['tune', '--help'], prog_name='cifar-mlflow')"
    )
    assert loaded_by(code) & {"torch", "mlflow", "optuna"} == set()


def test_the_mlproject_tune_entry_point_passes_every_parameter_as_a_tune_option():
    spec = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]["tune"]
    options = {o[2:].replace("-", "_") for p in tune_command.params for o in p.opts}
    assert set(spec["parameters"]) <= options
    assert {"trials", "lr_range", "tune_id", "executor", "epochs", "data_dir"} <= set(
        spec["parameters"]
    )
    for name, param in spec["parameters"].items():
        assert param["default"] == "", name
        assert f"--{name.replace('_', '-')} {{{name}}}" in spec["command"], name


@pytest.mark.parametrize(
    "args, message",
    [(("--val-size", "0"), "error: a tune chooses on the validation split, and --val-size is 0"),
     (("--lr-range", "0.1,0.01"), "'0.1,0.01' is an empty range: give 0 < LOW < HIGH"),
     (("--lr", "0.1"), "a tune searches the learning rate: give --lr-range LOW,HIGH, not --lr")],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_no_run(args, message, tracking, image_folder):
    result = invoke("tune", "--experiment", tracking, "--data-dir", str(image_folder), *args)
    assert result.exit_code != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert MlflowClient().get_experiment_by_name(tracking) is None


def test_a_study_file_of_another_tune_is_refused_before_any_run(tracking, image_folder, tmp_path):
    search(tmp_path / "other.db", "other")
    result = invoke("tune", "--experiment", tracking, "--data-dir", str(image_folder), *TINY,
                    "--tune-id", "mine", "--storage", str(tmp_path / "other.db"))  # fmt: skip
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("error: ") and "holds the studies of tune other" in result.stderr
    )
    assert MlflowClient().get_experiment_by_name(tracking) is None


needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason='Ray is an extra: pip install -e ".[ray]"'
)


@needs_ray
def test_an_unreachable_ray_cluster_is_one_line_and_leaves_no_run(tracking, image_folder):
    result = invoke("tune", "--experiment", tracking, "--data-dir", str(image_folder), *TINY,
                    "--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}")  # fmt: skip
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("error: Ray cluster 127.0.0.1:") and "unreachable" in result.stderr
    )
    assert MlflowClient().get_experiment_by_name(tracking) is None


# ---- a real tune, killed by SIGTERM in its second trial, then resumed ----


@dataclass
class Scenario:
    experiment: str
    args: list[str]
    killed_code: int
    killed_output: str
    killed_statuses: dict[str, str]  # run name or trial label: status, right after the kill
    resumed_output: str
    resumed_code: int


def runs(experiment: str) -> list:
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def label(run) -> str:
    """'parent', a configuration's run name, or '<optimizer> trial <n>'."""
    tags = run.data.tags
    if TRIAL_TAG in tags:
        return f"{run.data.params['optimizer']} trial {tags[TRIAL_TAG]}"
    return run.info.run_name if tags.get("job") == CONFIG_JOB else "parent"


def wait_for_open_trial(experiment: str, optimizer: str, trial: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.info.status == "RUNNING" and r.data.tags.get(TRIAL_TAG) == trial
               and r.data.params.get("optimizer") == optimizer for r in runs(experiment)):  # fmt: skip
            return
        time.sleep(0.1)
    raise AssertionError(f"{optimizer} trial {trial} never ran")


@pytest.fixture(scope="module")
def scenario(mlflow_server, image_folder, tmp_path_factory):
    with tracking_on(mlflow_server.uri):
        experiment = f"test-tune-{uuid.uuid4().hex[:8]}"
        storage = tmp_path_factory.mktemp("tune") / "study.db"
        args = ["tune", "--experiment", experiment, "--data-dir", str(image_folder), *TINY,
                "--optimizer", "sgd", "--optimizer", "adam", "--trials", "2",
                "--lr-range", DIVERGING_RANGE, "--seed", SEED, "--tune-id", "t1", "--storage", str(storage)]  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "cifar_mlflow", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "sgd-s113 trial 1 " in line and line.rstrip().endswith("started"):
                break
        # Stop the second sgd trial while its run is open (a trial logs no models, so the time
        # after its last epoch is too short to aim at from its output).
        wait_for_open_trial(experiment, "sgd", "1")
        process.send_signal(signal.SIGTERM)
        lines += process.stdout.readlines()
        killed_code = process.wait(timeout=120)
        killed = {label(r): r.info.status for r in runs(experiment)}
        resumed = CliRunner().invoke(cli, args, catch_exceptions=False)
        yield Scenario(experiment, args, killed_code, "".join(lines), killed, resumed.output,
                       resumed.exit_code)  # fmt: skip


@pytest.mark.slow
def test_sigterm_ends_the_tune_and_its_open_runs_killed(scenario):
    assert scenario.killed_code == 128 + signal.SIGTERM, scenario.killed_output[-3000:]
    assert "stopped by SIGTERM" in scenario.killed_output
    assert scenario.killed_statuses == {
        "parent": "KILLED", "resnet18-relu-sgd-s113": "KILLED", "sgd trial 0": "FAILED",
        "sgd trial 1": "KILLED",
    }  # fmt: skip


@pytest.mark.slow
def test_the_resumed_tune_adds_no_trial_twice_and_a_diverged_one_does_not_stop_it(scenario):
    assert scenario.resumed_code == 0, scenario.resumed_output[-3000:]
    found = {label(r): r for r in runs(scenario.experiment)}
    statuses = {name: run.info.status for name, run in found.items()}
    # The interrupted trial 1 does not count: trial 2 replaces it; nothing else ran again.
    assert statuses == {
        "parent": "FINISHED", "resnet18-relu-sgd-s113": "FINISHED", "resnet18-relu-adam-s113": "FINISHED",
        "sgd trial 0": "FAILED", "sgd trial 1": "KILLED", "sgd trial 2": "FINISHED",
        "adam trial 0": "FAILED", "adam trial 1": "FINISHED",
    }  # fmt: skip
    for diverged in ("sgd trial 0", "adam trial 0"):
        assert "training diverged" in found[diverged].data.tags[FAILURE_TAG]
    assert "adam-s113 trial 1: finished" in scenario.resumed_output


@pytest.mark.slow
def test_runs_nest_and_each_configuration_holds_its_best_lr(scenario):
    found = {label(r): r for r in runs(scenario.experiment)}
    parent = found.pop("parent")
    for optimizer in ("sgd", "adam"):
        configuration = found[f"resnet18-relu-{optimizer}-s113"]
        assert configuration.data.tags[PARENT_TAG] == parent.info.run_id
        trials = [r for name, r in found.items() if name.startswith(f"{optimizer} trial")]
        assert {r.data.tags[PARENT_TAG] for r in trials} == {configuration.info.run_id}
        # Each trial's run is named apart from its configuration's, with its number and lr.
        for trial in trials:
            lr = float(trial.data.params["lr"])
            number = trial.data.tags[TRIAL_TAG]
            named = f"resnet18-relu-{optimizer}-s113 trial {number} (lr {lr:.3g})"
            assert trial.info.run_name == named
        [best] = [r for r in trials if r.info.status == "FINISHED"]
        assert configuration.data.tags["best_trial_run"] == best.info.run_id
        assert float(configuration.data.tags["tuned_lr"]) == pytest.approx(
            float(best.data.params["lr"]), rel=1e-5
        )
        assert "best_val_acc" in configuration.data.metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "tune")}
    assert artifacts == {"tune/best.json", "tune/val_acc_vs_lr-resnet18-relu-sgd-s113.png",
                         "tune/val_acc_vs_lr-resnet18-relu-adam-s113.png"}  # fmt: skip
    assert "resnet18-relu-adam-s113" in scenario.resumed_output.split("configuration")[-1]


@pytest.mark.slow
def test_a_finished_tune_rerun_adds_nothing(scenario, monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    before = len(runs(scenario.experiment))
    result = invoke(*scenario.args)
    assert result.exit_code == 0 and "nothing to tune" in result.output
    assert len(runs(scenario.experiment)) == before


@pytest.mark.slow
def test_sweep_tuned_trains_each_configuration_at_its_tuned_lr(scenario, tracking, tmp_path):
    configurations = {r.data.params["optimizer"]: float(r.data.tags["tuned_lr"])
                      for r in runs(scenario.experiment) if r.data.tags.get("job") == CONFIG_JOB}  # fmt: skip
    planned = invoke("sweep", "--tuned", "t1", "--dry-run", "--experiment", tracking)
    assert planned.exit_code == 0, planned.output
    # Readable: each run says its learning rate; no full-precision floats.
    assert not re.search(r"\d\.\d{8,}", planned.stdout), planned.stdout
    for optimizer, lr in configurations.items():
        assert re.search(rf"-{optimizer}-s0 +lr {lr:.3g}\b", planned.stdout), planned.stdout
    result = invoke("sweep", "--tuned", "t1", "--seeds", "1", "--epochs", "1", "--runs-per-gpu", "2",
                    "--no-system-metrics", "--experiment", tracking, "--output-dir", str(tmp_path))  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    finals = [r for r in runs(tracking) if "model" in r.data.tags]
    assert {r.data.params["optimizer"]: float(r.data.params["lr"]) for r in finals} == pytest.approx(
        configurations, rel=1e-5)  # fmt: skip
    assert {r.data.tags[TUNED_FROM_TAG] for r in finals} == {"t1"}
    assert {r.data.params["epochs"] for r in finals} == {"1"}
    # compare, run by the sweep into its parent, reads the tag: a comparison at tuned rates.
    assert "At tuned learning rates (t1)" in (tmp_path / "report.md").read_text()
