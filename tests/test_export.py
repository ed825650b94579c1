"""`export` and `predict` against a real tracking server, real tiny training runs, the real model
registry, `mlflow run -e export` and a real `mlflow models serve` process."""

from __future__ import annotations

import json
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
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from cifar_mlflow.cli import cli
from cifar_mlflow.core.data import CLASSES, as_model_input, load_cifar10
from cifar_mlflow.export.champion import ChampionError, choose_best_run
from cifar_mlflow.export.deployment import load_torchscript, onnx_logits
from cifar_mlflow.export.job import as_trained_module
from cifar_mlflow.testing.server import LocalServer
from cifar_mlflow.tracking.models import load_model
from cifar_mlflow.tracking.registry import RegistryError, register
from cifar_mlflow.tracking.serving import log_served_model
from cifar_mlflow.tracking.training_runs import TRAINED_BY, TRAINED_BY_TAG

from .conftest import PROJECT_ROOT, free_port, tiny_train_args, tracking_on

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


# --- choosing: real runs and LoggedModels on the real server, metadata only (no weights) -----


def make_run(experiment_id: str, model: str, status: str, checkpoints: dict, **tags: str) -> str:
    """A run of `model` with LoggedModels named like training's: {"best": {"val_acc": ...,
    "test_acc": ...}, "final": {...}}, their metrics linked to them as training's are."""
    client = MlflowClient()
    tags = {"model": model, TRAINED_BY_TAG: TRAINED_BY, **tags}  # as training tags its runs
    run = client.create_run(experiment_id, tags=tags)
    now = int(time.time() * 1000)
    for step, (name, metrics) in enumerate(checkpoints.items(), 1):
        logged = client.create_logged_model(experiment_id, name, run.info.run_id,
                                            tags={"epoch": str(step)})  # fmt: skip
        client.log_batch(run.info.run_id, metrics=[
            Metric(k, v, now, step, model_id=logged.model_id) if isinstance(v, float) else
            Metric(k, v[0], now, step, model_id=logged.model_id, dataset_name=v[1],
                   dataset_digest="0123")  # (value, the dataset it was measured on)
            for k, v in metrics.items()
        ])  # fmt: skip
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    time.sleep(0.01)  # distinct start times, so "older" is well defined
    return run.info.run_id


def best(val_acc: float, test_acc: float = 0.5) -> dict:
    return {"best": {"val_acc": val_acc, "test_acc": test_acc},
            "final": {"val_acc": val_acc - 0.1, "test_acc": test_acc}}  # fmt: skip


def test_the_champion_is_the_best_validation_checkpoint_of_a_run_that_may_win(tracking):
    exp = mlflow.create_experiment(tracking)
    ghost = "ghost_resnet18"
    older_best = make_run(exp, ghost, "FINISHED", best(0.7))
    make_run(exp, ghost, "FINISHED", best(0.7))  # a tie: the older run keeps it
    low = make_run(exp, ghost, "FINISHED", best(0.5), optimizer="adam")
    on_test = make_run(exp, ghost, "FINISHED", best(0.6, test_acc=0.95))  # test must not choose
    make_run(exp, ghost, "FINISHED", {})  # no checkpoint at all
    make_run(exp, ghost, "FINISHED", {"final": {"test_acc": 0.99}})  # no validation split
    make_run(exp, ghost, "FAILED", best(0.99), failure_reason="diverged: loss nan")
    make_run(exp, ghost, "KILLED", best(0.98))
    make_run(exp, ghost, "RUNNING", best(0.97))
    make_run(exp, "resnet18", "FINISHED", best(0.9))

    champion = choose_best_run(tracking, ghost)
    assert (champion.run_id, champion.checkpoint.name) == (older_best, "best")
    assert (champion.metric, champion.value, champion.chosen_on) == ("val_acc", 0.7, "validation")
    assert champion.run_id != on_test
    assert champion.qualifying_runs == 4 and champion.left_out == 1
    assert champion.model_uri == f"models:/{champion.checkpoint.model_id}"
    assert champion.version_tags()["val_acc"] == "0.7"
    assert champion.version_tags()["test_acc_at_best"] == "0.5"
    assert choose_best_run(tracking, ghost, extra_filter="tags.optimizer = 'adam'").run_id == low
    assert choose_best_run(tracking, "resnet18").value == 0.9


def test_val_acc_counts_on_the_validation_dataset_or_from_a_run_that_names_none(tracking):
    exp = mlflow.create_experiment(tracking)
    named = make_run(exp, "resnet18", "FINISHED", {"best": {"val_acc": (0.8, "cifar10-val")}})
    make_run(exp, "resnet18", "FINISHED", {"best": {"val_acc": 0.7}})  # metrics name no dataset
    make_run(exp, "resnet18", "FINISHED", {"best": {"val_acc": (0.9, "cifar10-test")}})
    champion = choose_best_run(tracking, "resnet18")
    assert (champion.run_id, champion.value, champion.qualifying_runs) == (named, 0.8, 2)


def test_without_validation_the_final_checkpoints_compete_on_the_test_set(tracking):
    exp = mlflow.create_experiment(tracking)
    make_run(exp, "resnet18", "FINISHED", {"final": {"test_acc": 0.6}})
    winner = make_run(exp, "resnet18", "FINISHED", {"final": {"test_acc": 0.8}})
    champion = choose_best_run(tracking, "resnet18")
    assert (champion.run_id, champion.checkpoint.name) == (winner, "final")
    assert (champion.chosen_on, champion.metric, champion.left_out) == ("test", "test_acc", 0)


def test_choose_best_run_explains_why_nothing_qualifies(tracking):
    exp = mlflow.create_experiment(tracking)
    make_run(exp, "ghost_resnet18", "FAILED", best(0.9), failure_reason="diverged")
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
    peaked: str  # a Ghost run whose val_acc peaks before its last epoch: the champion
    weaker: str  # a Ghost run with lower val_acc
    data_dir: Path


def train_run(data_dir: Path, experiment: str, *extra: str) -> str:
    args = tiny_train_args(data_dir, experiment, "--model", "ghost_resnet18", *extra)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return re.search(r"run ([0-9a-f]{32}) finished", result.output).group(1)


def load_checkpoint(run_id: str, name: str):
    model_id = MlflowClient().get_run(run_id).data.tags[f"{name}_model_id"]
    return mlflow.pytorch.load_model(f"models:/{model_id}")


def metrics_of(run_id: str) -> dict[str, float]:
    return MlflowClient().get_run(run_id).data.metrics


@pytest.fixture(scope="module")
def study(mlflow_server, image_folder):
    """Two real Ghost runs with a validation split (the default), and a failed Ghost run that
    would win on its metric: ~30 s of CPU. (Runs that must not win, and runs without
    validation, are left to the cheaper tests above.)"""
    with tracking_on(mlflow_server.uri):
        experiment = f"export-{uuid.uuid4().hex[:8]}"
        # Measured on this data (seed 0, CPU, so every run repeats it): val_acc 0.1, 0.2, 0.1.
        kaiming = ("--init", "kaiming")
        peaked = train_run(image_folder, experiment, "--lr", "0.05", "--epochs", "3", *kaiming)
        weaker = train_run(image_folder, experiment, "--lr", "0.001", "--epochs", "1", *kaiming)
        assert metrics_of(peaked)["best_epoch"] < 3, "the data changed: pick another peaked run"
        assert metrics_of(peaked)["best_val_acc"] > metrics_of(weaker)["best_val_acc"]
        exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
        make_run(exp_id, "ghost_resnet18", "FAILED", best(1.0), failure_reason="diverged")
        yield Study(experiment, peaked, weaker, image_folder)


@dataclass(frozen=True)
class Exported:
    result: object  # click's Result of `cifar-mlflow export`
    name: str
    version: mlflow.entities.model_registry.ModelVersion
    export_run: mlflow.entities.Run


@pytest.fixture(scope="module")
def exported(study):
    """`cifar-mlflow export` with no --data-dir: the data is the champion run's."""
    name = f"cifar10-ghost-{uuid.uuid4().hex[:6]}"
    result = invoke("export", "--experiment", study.experiment, "--name", name)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    version = client.get_model_version_by_alias(name, "champion")
    export_run = client.get_run(version.tags["export_run_id"])
    return Exported(result, name, version, export_run)


def test_export_registers_the_best_validation_checkpoint_not_the_last(study, exported):
    champion = MlflowClient().get_run(study.peaked)
    metrics, tags = champion.data.metrics, exported.version.tags
    assert exported.version.run_id == study.peaked  # not the failed run, nor the weaker one
    # The version is the model logged to serve that checkpoint, tagged with the checkpoint.
    assert exported.version.tags["checkpoint_model_id"] == champion.data.tags["best_model_id"]
    served = mlflow.get_logged_model(exported.version.source.removeprefix("models:/"))
    assert (served.name, served.source_run_id) == ("served", study.peaked)
    assert tags["checkpoint"] == "best" and int(tags["epoch"]) == metrics["best_epoch"]
    assert float(tags["val_acc"]) == metrics["best_val_acc"]
    assert float(tags["test_acc_at_best"]) == metrics["test_acc_at_best"]
    assert tags["model_params"] == "5706186"
    assert tags["data_digest"] == champion.data.params["data_digest"]
    assert f"models:/{exported.name}@champion" in exported.result.output


def test_the_registered_weights_are_those_of_the_best_epoch(study, exported, tracking):
    """The same run stopped at its best epoch (same seed, constant schedule: on a CPU the same
    steps bit for bit) ends with the weights that the champion must hold."""
    best_epoch = int(metrics_of(study.peaked)["best_epoch"])
    at_best = train_run(study.data_dir, tracking, "--lr", "0.05", "--epochs", str(best_epoch),
                        "--init", "kaiming")  # fmt: skip
    images = torch.from_numpy(as_model_input(load_cifar10(study.data_dir).test.images))
    with torch.no_grad():
        registered = mlflow.pytorch.load_model(f"models:/{exported.name}@champion")(images)
        expected = load_checkpoint(at_best, "final")(images)
        last = load_checkpoint(study.peaked, "final")(images)
    assert torch.allclose(registered, expected, atol=1e-5)
    assert not torch.allclose(registered, last, atol=1e-3)  # the last epoch is another model


def test_the_champion_loads_without_pickle_and_scores_what_training_logged(
    study, exported, monkeypatch
):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pytorch.load_model(f"models:/{exported.name}@champion")
    data = load_cifar10(study.data_dir)
    assert accuracy(model, data) == pytest.approx(metrics_of(study.peaked)["test_acc_at_best"])
    classes = mlflow.models.get_model_info(f"models:/{exported.name}@champion").metadata["classes"]
    assert classes == list(CLASSES)
    # Through pyfunc (what `mlflow models serve` uses), with pickle refused too: named classes.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{exported.name}@champion")
    answer = pyfunc.predict(as_model_input(data.test.images[:3]))
    assert list(answer.columns) == ["class", "probability", *CLASSES] and len(answer) == 3
    with torch.no_grad():
        logits = model(torch.from_numpy(as_model_input(data.test.images[:3])))
    assert answer["class"].tolist() == [CLASSES[i] for i in logits.argmax(1)]


def test_exported_files_agree_with_the_registered_model(study, exported, tmp_path):
    run_id = exported.export_run.info.run_id
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="deployment",
                                                      dst_path=str(tmp_path)))  # fmt: skip
    images = as_model_input(load_cifar10(study.data_dir).test.images)
    model = mlflow.pytorch.load_model(f"models:/{exported.name}@champion")
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
    assert info["source"]["checkpoint"] == "best"
    tags = exported.export_run.data.tags
    assert float(tags["export.onnx_max_abs_diff"]) <= 1e-4
    assert float(tags["export.torchscript_max_abs_diff"]) <= 1e-4


def test_export_evaluates_the_champion_with_scikit_learn(study, exported, tmp_path):
    run = exported.export_run
    numbers = {k.removeprefix("export."): float(v) for k, v in run.data.tags.items()
               if k.startswith("export.")}  # fmt: skip
    assert numbers["test_acc"] == pytest.approx(numbers["training_logged_test_acc"], abs=1e-5)
    assert run.data.tags["export_of"] == exported.version.run_id
    assert "checkpoint `best`" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics == {}  # the experiment's charts hold training metrics only
    # The evaluation is linked to the registered checkpoint, with the split it was measured on.
    [model] = [m for m in mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list")
        if m.model_id == exported.version.tags["checkpoint_model_id"]]  # fmt: skip
    linked = {m.key: m for m in model.metrics}
    assert linked["test_macro_f1"].value == pytest.approx(numbers["macro_f1"], rel=1e-5)  # a tag: 6 digits
    assert linked["test_macro_f1"].dataset_name == "cifar10-test"
    # The registry's pages say what the model and this version are, and how to load it.
    client = MlflowClient()
    assert "`best` checkpoint" in client.get_registered_model(exported.name).description
    described = client.get_model_version(exported.name, exported.version.version).description
    assert f"run `{exported.version.run_id}`" in described and "validation accuracy" in described
    assert f'mlflow.pytorch.load_model("models:/{exported.name}@champion")' in described
    assert "`.eval()` and `.train()` raise `NotImplementedError`" in described

    table = MlflowClient().load_table(run.info.experiment_id, "evaluation/per_class_metrics.json",
                                      run_ids=[run.info.run_id])  # fmt: skip
    assert table["class"].tolist() == list(CLASSES)
    assert table["support"].sum() == 40
    # recall of a class is its correct predictions over its images, so they add up to accuracy
    correct = (table["recall"] * table["support"]).sum()
    assert correct / 40 == pytest.approx(numbers["test_acc"], abs=1e-3)
    assert numbers["macro_f1"] == pytest.approx(table["f1"].mean(), abs=1e-3)

    png = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path),
                                              artifact_path="evaluation/confusion_matrix.png")  # fmt: skip
    with Image.open(png) as chart:
        assert chart.format == "PNG" and min(chart.size) > 300


def test_exporting_the_same_champion_again_adds_no_version(study, exported, mlflow_server):
    """Through `mlflow run -e export`, the entry point users are told about, with no data_dir:
    the data follows the run."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local",
               "-e", "export", "--experiment-name", study.experiment,
               "-P", f"experiment={study.experiment}", "-P", f"name={exported.name}"]  # fmt: skip
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
    candidate = choose_best_run(study.experiment, "ghost_resnet18",
                                extra_filter=f"attributes.run_id = '{study.weaker}'")  # fmt: skip

    module = as_trained_module(load_model(candidate.model_uri), candidate.run, CLASSES)
    example = as_model_input(load_cifar10(study.data_dir).test.images[:2])

    def register_as(alias: str):
        return register(candidate.checkpoint.model_id, candidate.run_id, exported.name, alias,
                        candidate.version_tags(),
                        lambda: log_served_model(module, candidate.run_id, candidate.epoch,
                                                 CLASSES, example, {}))  # fmt: skip

    def served_models() -> list:
        return [m for m in mlflow.search_logged_models(
            experiment_ids=[candidate.run.info.experiment_id], output_format="list")
            if m.source_run_id == study.weaker and m.name == "served"]  # fmt: skip

    with pytest.raises(RegistryError, match="nothing was registered"):
        register_as("v9")  # reserved: the registry refuses it after the version is created
    assert len(client.search_model_versions(f"name = '{exported.name}'")) == 1
    assert served_models() == []  # the model logged for it is deleted too

    registration = register_as("challenger")
    assert registration.created and registration.version != exported.version.version
    assert client.get_model_version_by_alias(exported.name, "challenger").run_id == study.weaker
    assert client.get_model_version_by_alias(exported.name, "champion").run_id == study.peaked


def test_export_errors_are_one_line_and_register_nothing(study, mlflow_server, monkeypatch):
    name = f"never-{uuid.uuid4().hex[:6]}"
    base = ("export", "--experiment", study.experiment, "--name", name)
    result = invoke(*base, "--filter", "params.lr = '9'")
    assert_one_line_error(result, "no FINISHED ghost_resnet18 run matching --filter")
    assert_one_line_error(invoke(*base, "--alias", "latest"), "--alias 'latest'")
    assert_one_line_error(invoke("export", "--model", "vgg16"), "vgg16", exit_code=2)
    not_cifar = study.data_dir / "test"  # holds class folders, not train/ and test/
    result = invoke(*base, "--data-dir", str(not_cifar))  # after the line naming the champion
    assert result.exit_code == 1 and result.output.count("error: ") == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: data directory")
    assert_not_registered(name)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CIFAR_MLFLOW_SERVER_WAIT", "1")  # default 10 s: tests/test_cli_errors.py
    assert_one_line_error(invoke(*base), "unreachable")


def test_export_names_the_data_folder_that_is_gone(tracking, tmp_path):
    exp = mlflow.create_experiment(tracking)
    run_id = make_run(exp, "ghost_resnet18", "FINISHED", best(0.5))
    gone = tmp_path / "moved-away"
    MlflowClient().log_param(run_id, "data_source", f"image-folder:{gone}")
    result = invoke("export", "--experiment", tracking, "--name", f"never-{uuid.uuid4().hex[:6]}")
    assert result.exit_code == 1 and result.output.count("error: ") == 1, result.output
    last = result.output.strip().splitlines()[-1]  # after the line naming the champion
    assert last.startswith("error: ") and str(gone) in last and "--data-dir" in last


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
    # Each answer names its class, with its probability and every class's.
    predictions = response.json()["predictions"]
    assert [p["class"] for p in predictions] == onnx_top_class(exported, photos, tmp_path)
    for p in predictions:
        assert sum(p[c] for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
        assert p["probability"] == max(p[c] for c in CLASSES) == p[p["class"]]

    served = invoke("predict", "--server", model_server, *map(str, photos))
    local = invoke("predict", "--model-uri", f"models:/{exported.name}@champion", *map(str, photos))
    assert served.exit_code == 0 and local.exit_code == 0, served.output + local.output
    assert served.stdout == local.stdout
