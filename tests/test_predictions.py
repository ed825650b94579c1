"""Per-image outcomes: a real training run logs each checkpoint's predicted classes beside the
splits' digests, they agree with its logged accuracies, and hostile or missing files are told
apart; the initialisation is chosen, logged, and matters."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.tracking.datasets import logged_digest
from cifar_mlflow.tracking.predictions import (
    Predictions,
    PredictionsUnreadable,
    load_predictions,
    log_predictions,
    read_file,
)

from .conftest import tiny_train_args


def train(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return mlflow.last_active_run().info.run_id


def test_a_run_logs_what_each_checkpoint_predicted_and_it_agrees_with_its_metrics(
    image_folder, tracking
):
    args = ("--model", "ghost_resnet18", "--val-size", "20")
    run_id = train(*tiny_train_args(image_folder, tracking, *args))
    run = mlflow.get_run(run_id)
    client = MlflowClient()
    assert run.data.tags["predictions"] == "best,final"
    files = {a.path for a in client.list_artifacts(run_id, "predictions")}
    assert files == {"predictions/best.npz", "predictions/final.npz"}

    metrics = run.data.metrics
    best_epoch = int(metrics["best_epoch"])
    val_acc = {m.step: m.value for m in client.get_metric_history(run_id, "val_acc")}
    for checkpoint, test_acc, epoch in (("best", metrics["test_acc_at_best"], best_epoch),
                                        ("final", metrics["final_test_acc"], 2)):  # fmt: skip
        predictions = load_predictions(run_id, checkpoint)
        assert predictions.test_pred.shape == predictions.test_label.shape == (40,)
        assert predictions.val_pred.shape == predictions.val_label.shape == (20,)
        assert predictions.test_pred.dtype == np.uint8
        assert predictions.test_digest == logged_digest(run, "test")
        assert predictions.val_digest == logged_digest(run, "val")
        # The very images the logged accuracies were measured on, image by image.
        assert np.mean(predictions.test_pred == predictions.test_label) == test_acc
        assert np.mean(predictions.val_pred == predictions.val_label) == val_acc[epoch]
    # The file as any reader sees it: plain arrays, no pickle.
    path = client.download_artifacts(run_id, "predictions/best.npz")
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"test_pred", "test_label", "val_pred", "val_label",
                                   "test_digest", "val_digest"}  # fmt: skip
        assert data["test_digest"].shape == ()
        assert str(data["test_digest"]) == logged_digest(run, "test")

    # Each checkpoint's metrics name the split they were measured on; the run's history is as
    # it was (one value per epoch).
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2]
    for model in mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             output_format="list"):  # fmt: skip
        linked = {m.key: (m.dataset_name, m.dataset_digest) for m in model.metrics}
        assert linked["val_acc"] == ("cifar10-val", logged_digest(run, "val"))
        assert linked["test_acc"] == ("cifar10-test", logged_digest(run, "test"))
        assert linked["train_loss"] == (None, None)
    # MLflow's search by dataset finds them (through a server it needs the digest too).
    val = [{"dataset_name": "cifar10-val", "dataset_digest": logged_digest(run, "val")}]
    final = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], datasets=val, output_format="list",
        filter_string="name = 'final' AND metrics.val_acc >= 0")  # fmt: skip
    assert len(final) == 1 and final[0].source_run_id == run_id

    # The study's initialisation by default; kaiming on request, logged, and it trains
    # otherwise: the same seed and data, so epoch 1 differs by the initial weights alone (a
    # constant schedule: --epochs changes nothing in it).
    assert run.data.params["init"] == "torch-default"
    kaiming = mlflow.get_run(train(*tiny_train_args(image_folder, tracking, *args, "--epochs",
                                                    "1", "--init", "kaiming")))  # fmt: skip
    assert kaiming.data.params["init"] == "kaiming"
    epoch_1 = client.get_metric_history(run_id, "train_loss")[0]
    assert epoch_1.step == 1 and kaiming.data.metrics["train_loss"] != epoch_1.value


def test_a_run_without_predictions_reads_as_none_and_a_bad_file_is_refused(tracking, tmp_path):
    mlflow.set_experiment(tracking)
    with mlflow.start_run() as run:
        pass
    assert load_predictions(run.info.run_id, "final") is None  # older runs keep working

    labels = np.arange(10, dtype=np.uint8)
    with mlflow.start_run() as run:
        log_predictions("final", Predictions(labels, labels, "d1"))
        (tmp_path / "best.npz").write_bytes(b"not a zip file")
        mlflow.log_artifact(str(tmp_path / "best.npz"), "predictions")
        mlflow.set_tag("predictions", "best,final")
    final = load_predictions(run.info.run_id, "final")
    assert final.accuracy("test") == 1.0 and final.val_pred is None and final.test_digest == "d1"
    with pytest.raises(PredictionsUnreadable, match="predictions/best.npz is not a predictions"):
        load_predictions(run.info.run_id, "best")


@pytest.mark.parametrize("arrays, problem", [
    ({"test_pred": np.array([object()]), "test_label": np.zeros(1, np.uint8)}, "pickle"),
    ({"test_pred": np.zeros(3, np.int64), "test_label": np.zeros(3, np.uint8),
      "test_digest": np.array("d")}, "uint8"),
    ({"test_pred": np.zeros(3, np.uint8), "test_label": np.zeros(2, np.uint8),
      "test_digest": np.array("d")}, "labels"),
    ({"test_pred": np.zeros(3, np.uint8), "test_label": np.zeros(3, np.uint8),
      "test_digest": np.array(["d", "e"])}, "0-d string"),
    ({"test_pred": np.zeros(3, np.uint8), "test_label": np.zeros(3, np.uint8),
      "test_digest": np.array("d"), "val_pred": np.zeros(1, np.uint8)}, "go together"),
])  # fmt: skip
def test_a_file_that_is_not_ours_is_refused_with_the_reason(tmp_path, arrays, problem):
    path = tmp_path / "p.npz"
    np.savez_compressed(path, **arrays)
    with pytest.raises(PredictionsUnreadable, match=problem):
        read_file(path, "the file")
