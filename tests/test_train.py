"""`cifar-mlflow train` against a real tracking server, through click's CliRunner."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.core.data import as_model_input, load_cifar10
from cifar_mlflow.tracking.outbox import CHECKPOINT_EPOCH_TAG, CHECKPOINT_TAG, SLOTS

from .conftest import tiny_train_args

EPOCH_METRICS = {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds",
                 "images_per_second"}  # fmt: skip


def only_run(experiment: str):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def train(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("layout", ["image_folder", "torchvision_dir"])
def test_train_records_everything(layout, request, tracking):
    data_dir = request.getfixturevalue(layout)
    # A name given on the command line wins over the configuration's (one layout is enough);
    # the other trains the newest choices (adding one is an entry in each registry).
    named = ("--run-name", "my first run") if layout == "image_folder" else ()
    newest = ("--optimizer", "adamw", "--activation", "silu", "--weight-decay", "0.05")
    result = train(*tiny_train_args(data_dir, tracking, "--model", "ghost_resnet18",
                                    "--val-size", "20", *(named or newest)))  # fmt: skip
    assert result.exit_code == 0, result.output

    # Not a terminal: one summary line per epoch, no progress bar.
    summaries = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert [s.split()[1] for s in summaries] == ["1/2", "2/2"] and "batch/s" not in result.output

    run = only_run(tracking)
    client = MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.info.run_name == ("my first run" if named else "ghost_resnet18-silu-adamw-s0")
    assert f"run {run.info.run_id} finished: {run.info.run_name} in " in result.output
    params = run.data.params
    assert params["model"] == "ghost_resnet18" and params["lr"] == "0.01"
    assert params["model_params"] == "5706186"
    assert params["train_images"] == "60" and params["val_images"] == "20"
    assert params["test_images"] == "40"
    assert params["data_source"].startswith(layout.split("_")[0].replace("image", "image-folder"))
    assert params["torch_version"] == torch.__version__ and params["device_used"] == "cpu"
    assert int(params["model_flops"]) > 0
    assert run.data.tags["model"] == "ghost_resnet18"
    assert run.data.tags["optimizer"] == ("sgd" if named else "adamw")
    assert run.data.tags["activation"] == ("relu" if named else "silu")
    # How it trained: alone on its device, fp32 on the CPU, uncompiled as asked (no fallback).
    assert (params["runs_per_device"], params["precision_used"]) == ("1", "fp32")
    assert params["compile_used"] == "False" and "compile_fallback" not in params
    for key in EPOCH_METRICS | {"val_loss", "val_acc"}:
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    for key in ("train_acc", "test_acc", "val_acc"):
        assert all(0 <= m.value <= 1 for m in client.get_metric_history(run.info.run_id, key))
    test_acc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_acc")}
    val_acc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
    metrics = run.data.metrics
    seconds = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")]
    assert metrics["epoch_seconds_mean"] == pytest.approx(sum(seconds) / 2)
    assert metrics["epoch_seconds_mean_warm"] == pytest.approx(seconds[1])  # without the first
    best = min(e for e in val_acc if val_acc[e] == max(val_acc.values()))  # ties: the earlier
    assert (metrics["best_epoch"], metrics["best_val_acc"]) == (best, val_acc[best])
    assert metrics["test_acc_at_best"] == test_acc[best]  # reported, never used to choose
    assert metrics["final_test_acc"] == test_acc[2] and "best_test_acc" not in metrics
    assert metrics["model_params"] == 5706186
    # Storage stays bounded: the two LoggedModels live with the models; the default policy
    # (5m) sent one checkpoint, after the last epoch (the first slot), removed once FINISHED;
    # what the two predicted stays (tests/test_predictions.py).
    assert run.data.tags[CHECKPOINT_EPOCH_TAG] == "2"
    assert run.data.tags[CHECKPOINT_TAG].startswith(SLOTS[0])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"curves.png", "predictions"}
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert sorted((m.name, m.tags["epoch"]) for m in models) == [
        ("best", str(best)),
        ("final", "2"),
    ]
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"cifar10-train", "cifar10-val", "cifar10-test"}
    assert run.data.params["data_digest"] and all(d.digest for d in inputs.values())


def test_logged_model_reproduces_test_acc_without_pickle(image_folder, tracking, monkeypatch):
    result = train(*tiny_train_args(image_folder, tracking, "--epochs", "1"))
    assert result.exit_code == 0, result.output
    run = only_run(tracking)
    data = load_cifar10(image_folder)
    images = as_model_input(data.test.images)

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/final")
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(1).numpy()
    assert np.mean(predicted == data.test.labels) == pytest.approx(run.data.metrics["test_acc"])

    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/final")
    logits = np.asarray(pyfunc.predict(images))
    assert logits.shape == (len(images), 10)
    assert (logits.argmax(1) == predicted).all()


def test_same_seed_gives_identical_metrics_on_cpu(image_folder, tracking):
    for _ in range(2):
        result = train(*tiny_train_args(image_folder, tracking, "--epochs", "1", "--seed", "3"))
        assert result.exit_code == 0, result.output
    runs = mlflow.search_runs(experiment_names=[tracking], output_format="list")
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    first, second = ({k: r.data.metrics[k] for k in keys} for r in runs)
    assert first == second
