"""`export` and `predict` against a real tracking server, real tiny training runs, the real model
registry, `mlflow run -e export` and a real `mlflow models serve` process."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from cifar_mlflow.cli import cli
from cifar_mlflow.core.data import CLASSES, as_model_input, load_cifar10
from cifar_mlflow.export.champion import ChampionError, choose_best_run
from cifar_mlflow.export.deployment import load_torchscript, onnx_logits
from cifar_mlflow.testing.server import LocalServer
from cifar_mlflow.tracking.registry import RegistryError, register

from .conftest import PROJECT_ROOT, free_port, tiny_train_args

pytestmark = pytest.mark.slow  # trains real models and starts processes; still run by default


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


def assert_not_registered(name: str) -> None:
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found|not exist"):
        MlflowClient().get_registered_model(name)


def accuracy(model, data) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(as_model_input(data.test.images))).argmax(1).numpy()
    return float(np.mean(predicted == data.test.labels))


# --- choosing: real runs on the real server, with metrics only (no model is loaded) ---------


def make_run(experiment_id: str, model: str, status: str, metrics: dict, **tags: str) -> str:
    client = MlflowClient()
    run = client.create_run(experiment_id, tags={"model": model, **tags})
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    time.sleep(0.01)  # distinct start times, so "older" is well defined
    return run.info.run_id


def test_choose_best_run_skips_runs_that_must_not_win(tracking):
    exp = mlflow.create_experiment(tracking)
    ghost = "ghost_resnet18"
    older_best = make_run(exp, ghost, "FINISHED", {"best_test_acc": 0.7})
    make_run(exp, ghost, "FINISHED", {"best_test_acc": 0.7})  # a tie: the older run keeps it
    low = make_run(exp, ghost, "FINISHED", {"best_test_acc": 0.5}, optimizer="adam")
    make_run(exp, ghost, "FINISHED", {"best_test_acc": math.nan})
    make_run(exp, ghost, "FINISHED", {})  # no metric at all
    make_run(exp, ghost, "FAILED", {"best_test_acc": 0.99}, failure_reason="diverged: loss nan")
    make_run(exp, ghost, "KILLED", {"best_test_acc": 0.98})
    make_run(exp, ghost, "RUNNING", {"best_test_acc": 0.97})
    make_run(exp, "resnet18", "FINISHED", {"best_test_acc": 0.9})

    best = choose_best_run(tracking, ghost)
    assert (best.run_id, best.metric, best.value) == (older_best, "best_test_acc", 0.7)
    assert best.qualifying_runs == 3
    assert choose_best_run(tracking, ghost, extra_filter="tags.optimizer = 'adam'").run_id == low
    assert choose_best_run(tracking, "resnet18").value == 0.9


def test_choose_best_run_prefers_the_validation_metric_when_every_run_logs_it(tracking):
    exp = mlflow.create_experiment(tracking)
    by_val = make_run(exp, "resnet18", "FINISHED", {"best_test_acc": 0.6, "best_val_acc": 0.8})
    by_test = make_run(exp, "resnet18", "FINISHED", {"best_test_acc": 0.9, "best_val_acc": 0.5})
    best = choose_best_run(tracking, "resnet18")
    assert (best.run_id, best.metric) == (by_val, "best_val_acc")
    assert choose_best_run(tracking, "resnet18", metric="best_test_acc").run_id == by_test

    make_run(exp, "resnet18", "FINISHED", {"best_test_acc": 0.7})  # no validation split
    best = choose_best_run(tracking, "resnet18")
    assert (best.run_id, best.metric) == (by_test, "best_test_acc")


def test_choose_best_run_explains_why_nothing_qualifies(tracking):
    exp = mlflow.create_experiment(tracking)
    make_run(exp, "ghost_resnet18", "FAILED", {"best_test_acc": 0.9}, failure_reason="diverged")
    with pytest.raises(ChampionError, match="no FINISHED ghost_resnet18 run in experiment"):
        choose_best_run(tracking, "ghost_resnet18")
    with pytest.raises(RegistryError, match="does not exist"):
        choose_best_run(f"{tracking}-missing", "ghost_resnet18")
    with pytest.raises(RegistryError, match="not a valid MLflow filter"):
        choose_best_run(tracking, "ghost_resnet18", extra_filter="params.lr ~ 1")


# --- a study of real tiny training runs, exported once for the tests below -------------------


@dataclass(frozen=True)
class Study:
    experiment: str
    ghost_runs: list[str]
    data_dir: Path


@pytest.fixture(scope="module")
def study(mlflow_server, image_folder):
    """Two real Ghost runs, and a failed Ghost run that would win on its metric: ~20 s of CPU.
    (Other model families and unfinished runs are left to the cheaper tests above.)"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        mlflow.set_tracking_uri(mlflow_server.uri)
        experiment = f"export-{uuid.uuid4().hex[:8]}"
        run_ids = []
        for lr in ("0.05", "0.01"):
            args = tiny_train_args(image_folder, experiment, "--model", "ghost_resnet18", "--lr", lr,
                                   "--epochs", "1")  # fmt: skip
            result = CliRunner().invoke(cli, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            run_ids.append(re.search(r"run ([0-9a-f]{32}) finished", result.output).group(1))
        exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
        make_run(
            exp_id, "ghost_resnet18", "FAILED", {"best_test_acc": 1.0}, failure_reason="diverged"
        )
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set by mlflow.set_experiment in train
        yield Study(experiment, run_ids, image_folder)


@dataclass(frozen=True)
class Exported:
    result: object  # click's Result of `cifar-mlflow export`
    name: str
    version: mlflow.entities.model_registry.ModelVersion
    export_run: mlflow.entities.Run


@pytest.fixture(scope="module")
def exported(study):
    name = f"cifar10-ghost-{uuid.uuid4().hex[:6]}"
    result = invoke("export", "--experiment", study.experiment, "--data-dir", str(study.data_dir),
                    "--name", name)  # fmt: skip
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    version = client.get_model_version_by_alias(name, "champion")
    export_run = client.get_run(version.tags["export_run_id"])
    return Exported(result, name, version, export_run)


def test_export_registers_the_best_finished_ghost_run(study, exported):
    client = MlflowClient()
    ghost = [client.get_run(r) for r in study.ghost_runs]
    best_value = max(r.data.metrics["best_test_acc"] for r in ghost)
    champion = client.get_run(exported.version.run_id)
    assert exported.version.run_id in study.ghost_runs  # not the failed run
    assert champion.data.metrics["best_test_acc"] == best_value
    assert exported.version.tags["source_run_id"] == champion.info.run_id
    assert exported.version.tags["metric"] == "best_test_acc"
    assert float(exported.version.tags["metric_value"]) == best_value
    assert exported.version.tags["model_params"] == "5706186"
    assert f"models:/{exported.name}@champion" in exported.result.output

    model = mlflow.pytorch.load_model(f"models:/{exported.name}@champion")
    data = load_cifar10(study.data_dir)
    assert accuracy(model, data) == pytest.approx(champion.data.metrics["test_acc"])


def test_exported_files_agree_with_the_registered_model(study, exported, tmp_path):
    run_id = exported.export_run.info.run_id
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="deployment",
                                                      dst_path=str(tmp_path)))  # fmt: skip
    images = as_model_input(load_cifar10(study.data_dir).test.images)
    model = mlflow.pytorch.load_model(f"models:/{exported.name}@champion").eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    with torch.no_grad():
        scripted = load_torchscript(folder / "model_torchscript.pt")(torch.from_numpy(images))
    assert np.abs(scripted.numpy() - expected).max() <= 1e-4
    assert np.abs(onnx_logits(folder / "model.onnx", images) - expected).max() <= 1e-4

    info = json.loads((folder / "model_info.json").read_text())
    assert info["classes"] == list(CLASSES)
    assert info["input"]["range"] == [0.0, 1.0] and info["input"]["shape"] == ["N", 3, 32, 32]
    assert info["input"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert info["source"]["version"] == exported.version.version
    metrics = exported.export_run.data.metrics
    assert metrics["onnx_max_abs_diff"] <= 1e-4 and metrics["torchscript_max_abs_diff"] <= 1e-4


def test_export_evaluates_the_champion_with_scikit_learn(study, exported, tmp_path):
    run = exported.export_run
    metrics = run.data.metrics
    assert metrics["test_acc"] == pytest.approx(metrics["training_test_acc"])
    assert run.data.tags["export_of"] == exported.version.run_id

    table = MlflowClient().load_table(run.info.experiment_id, "evaluation/per_class_metrics.json",
                                      run_ids=[run.info.run_id])  # fmt: skip
    assert table["class"].tolist() == list(CLASSES)
    assert table["support"].sum() == 40
    # recall of a class is its correct predictions over its images, so they add up to accuracy
    correct = (table["recall"] * table["support"]).sum()
    assert correct / 40 == pytest.approx(metrics["test_acc"], abs=1e-3)
    assert metrics["macro_f1"] == pytest.approx(table["f1"].mean(), abs=1e-3)

    png = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path),
                                              artifact_path="evaluation/confusion_matrix.png")  # fmt: skip
    with Image.open(png) as chart:
        assert chart.format == "PNG" and min(chart.size) > 300


def test_exporting_the_same_champion_again_adds_no_version(study, exported, mlflow_server):
    """Through `mlflow run -e export`, the entry point users are told about."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local",
               "-e", "export", "--experiment-name", study.experiment,
               "-P", f"experiment={study.experiment}", "-P", f"data_dir={study.data_dir}",
               "-P", f"name={exported.name}"]  # fmt: skip
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already registered" in result.stderr

    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{exported.name}'")
    assert [v.version for v in versions] == [exported.version.version]
    again = client.get_model_version_by_alias(exported.name, "champion")
    export_run = client.get_run(again.tags["export_run_id"])
    assert export_run.info.run_id != exported.export_run.info.run_id
    assert (
        export_run.info.status == "FINISHED" and export_run.data.tags["export_of"] == again.run_id
    )
    assert export_run.data.tags["mlflow.project.entryPoint"] == "export"


def test_a_new_champion_gets_a_new_version_and_a_failed_alias_leaves_nothing(study, exported):
    client = MlflowClient()
    other = next(r for r in study.ghost_runs if r != exported.version.run_id)
    candidate = choose_best_run(study.experiment, "ghost_resnet18",
                                extra_filter=f"attributes.run_id = '{other}'")  # fmt: skip
    def register_as(alias: str):
        return register(candidate.model_uri, candidate.run_id, exported.name, alias,
                        candidate.version_tags())  # fmt: skip

    with pytest.raises(RegistryError, match="nothing was registered"):
        register_as("v9")  # reserved: the registry refuses it after the version is created
    assert len(client.search_model_versions(f"name = '{exported.name}'")) == 1

    registration = register_as("challenger")
    assert registration.created and registration.version != exported.version.version
    assert client.get_model_version_by_alias(exported.name, "challenger").run_id == other
    assert client.get_model_version_by_alias(exported.name, "champion").run_id != other


def test_export_errors_are_one_line_and_register_nothing(study, mlflow_server, monkeypatch):
    name = f"never-{uuid.uuid4().hex[:6]}"
    base = ("export", "--experiment", study.experiment, "--data-dir", str(study.data_dir),
            "--name", name)  # fmt: skip
    result = invoke(*base, "--filter", "params.lr = '9'")
    assert_one_line_error(result, "no FINISHED ghost_resnet18 run matching --filter")
    assert_one_line_error(invoke(*base, "--alias", "latest"), "--alias 'latest'")
    assert_one_line_error(invoke(*base, "--metric", "no_such_metric"), "no_such_metric")
    assert_one_line_error(invoke("export", "--model", "vgg16"), "vgg16", exit_code=2)
    not_cifar = study.data_dir / "test"  # holds class folders, not train/ and test/
    assert_one_line_error(invoke(*base, "--data-dir", str(not_cifar)), "holds no CIFAR-10")
    assert_not_registered(name)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CIFAR_MLFLOW_SERVER_WAIT", "1")  # default 10 s: tests/test_cli_errors.py
    assert_one_line_error(invoke(*base), "unreachable")


# --- predict and serving ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(study, tmp_path_factory) -> list[Path]:
    """Test images saved as a consumer might have them: larger, JPEG, one greyscale."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, cls in enumerate(("airplane", "frog", "truck")):
        source = min((study.data_dir / "test" / cls).iterdir())
        with Image.open(source) as image:
            image = image.resize((96, 80), Image.Resampling.NEAREST)
            if i == 2:
                image = image.convert("L")
            paths.append(folder / f"{cls}.{'png' if i == 0 else 'jpg'}")
            image.save(paths[-1])
    return paths


def parse_predictions(output: str) -> dict[str, list[tuple[str, float]]]:
    parsed = {}
    for line in output.strip().splitlines():
        path, ranked = line.rsplit(": ", 1)
        parsed[Path(path).name] = [
            (c, float(p)) for c, p in (x.split() for x in ranked.split(", "))
        ]
    return parsed


def onnx_top_class(exported: Exported, paths: list[Path], tmp_path: Path) -> list[str]:
    """The classes the exported ONNX file gives, from images resized independently with PIL."""
    onnx = mlflow.artifacts.download_artifacts(run_id=exported.export_run.info.run_id,
                                               artifact_path="deployment/model.onnx",
                                               dst_path=str(tmp_path))  # fmt: skip
    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
            images.append(np.asarray(image).transpose(2, 0, 1))
    logits = onnx_logits(Path(onnx), as_model_input(np.stack(images)))
    return [CLASSES[i] for i in logits.argmax(1)]


def test_predict_prints_top_classes_of_any_image(exported, photos, tmp_path):
    result = invoke("predict", "--model-uri", f"models:/{exported.name}@champion", "--top", "2",
                    *map(str, photos))  # fmt: skip
    assert result.exit_code == 0, result.output
    predictions = parse_predictions(result.stdout)  # stderr may hold a download progress bar
    assert list(predictions) == [p.name for p in photos]
    for ranked in predictions.values():
        assert len(ranked) == 2 and 1 >= ranked[0][1] >= ranked[1][1] >= 0
        assert ranked[0][0] in CLASSES
    tops = [ranked[0][0] for ranked in predictions.values()]
    assert tops == onnx_top_class(exported, photos, tmp_path)


def test_predict_errors_are_one_line(exported, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert_one_line_error(invoke("predict", str(photos[0]), str(broken)), "broken.jpg")
    assert_one_line_error(invoke("predict", "--model-uri", f"models:/{exported.name}@nope",
                                 str(photos[0])), "nope")  # fmt: skip
    assert_one_line_error(invoke("predict", "--model-uri", "models:/no-such-model@champion",
                                 str(photos[0])), "no-such-model")  # fmt: skip
    assert_one_line_error(invoke("predict", "--server", f"http://127.0.0.1:{free_port()}",
                                 str(photos[0])), "unreachable")  # fmt: skip


class ModelServer(LocalServer):
    """`mlflow models serve` of a model, as the README shows it (~20 s to start); it answers
    /health like the tracking server, so waiting and stopping are the same."""

    def __init__(self, root: Path, model_uri: str, tracking_uri: str):
        self.model_uri = model_uri
        # `--env-manager local` starts uvicorn from PATH: this interpreter's, with mlflow in it
        path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
        super().__init__(root, {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path})

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "models", "serve", "-m", self.model_uri,
                "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip


@pytest.fixture
def model_server(exported, mlflow_server, tmp_path):
    server = ModelServer(tmp_path, f"models:/{exported.name}@champion", mlflow_server.uri)
    try:
        server.wait_ready(timeout=180)
        yield server.uri
    finally:
        server.stop()


def test_served_champion_answers_a_rest_request_with_the_right_classes(
    exported, photos, model_server, tmp_path
):
    body = invoke("predict", "--print-request", *map(str, photos))
    assert body.exit_code == 0, body.output
    response = requests.post(f"{model_server}/invocations", data=body.stdout,
                             headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert response.ok, response.text
    logits = np.asarray(response.json()["predictions"])
    assert logits.shape == (len(photos), len(CLASSES))
    assert [CLASSES[i] for i in logits.argmax(1)] == onnx_top_class(exported, photos, tmp_path)

    served = invoke("predict", "--server", model_server, *map(str, photos))
    local = invoke("predict", "--model-uri", f"models:/{exported.name}@champion", *map(str, photos))
    assert served.exit_code == 0 and local.exit_code == 0, served.output + local.output
    assert served.stdout == local.stdout
