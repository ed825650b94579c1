"""Nonsense never finishes: weights (or what they output) that are no longer finite after an epoch
end the run FAILED with a reason and no logged model, even where every step's loss looked finite
(the loss is taken before the step that breaks the weights). `--lr inf` never gets that far
(tests/test_options.py); a huge finite one does, for real."""

from __future__ import annotations

import mlflow
import pytest
import torch
from click.testing import CliRunner

from cifar_mlflow.cli import cli
from cifar_mlflow.core.config import TrainConfig
from cifar_mlflow.core.data import load_cifar10
from cifar_mlflow.core.engine import ModelDiverged, Trainer
from cifar_mlflow.tracking.runs import FAILURE_TAG

from .conftest import tiny_train_args


def test_weights_that_are_no_longer_finite_stop_the_epoch(image_folder):
    """A NaN in a batch-norm statistic: training-mode steps never read it, so every loss stays
    finite, yet the model it would log predicts NaN."""
    config = TrainConfig(model="ghost_resnet18", batch_size=16, train_limit=20, test_limit=10,
                         val_size=0, device="cpu")  # fmt: skip
    data = load_cifar10(image_folder, config.train_limit, config.test_limit, config.val_size)
    trainer = Trainer(config, data, torch.device("cpu"))
    norm = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.running_mean[0] = float("nan")
    with pytest.raises(
        ModelDiverged, match="the weights became NaN or infinite after epoch 1"
    ):
        trainer.run_epoch(1)


def test_a_huge_learning_rate_fails_the_run_and_logs_no_model(image_folder, tracking, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """One step per epoch (the batch is larger than the 20 training images: a warning, and the
    run logs the batch it used), at a finite lr of 3e38: the step's loss is finite, the weights
    after it are not. The decoded-image cache cannot be written either (a folder below a file,
    which stops root too): a warning, and training goes on."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE", str(tmp_path / "a-file" / "cache"))
    args = tiny_train_args(image_folder, tracking, "--model", "ghost_resnet18", "--lr", "3e38",
                           "--batch-size", "64", "--train-limit", "20", "--test-limit", "10",
                           "--val-size", "0")  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("warning: cannot write the decoded-image cache") for line in lines)
    assert (
        "warning: --batch-size 64 is larger than the 20 training images: each step trains on all "
        "20 (logged as batch_size_used)"
    ) in lines
    expected = "training diverged: the weights became NaN or infinite after epoch 1"
    assert lines[-1].startswith(f"error: {expected}")

    [run] = mlflow.search_runs(experiment_names=[tracking], output_format="list")
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG].startswith(expected)
    assert run.data.params["batch_size"] == "64" and run.data.params["batch_size_used"] == "20"
    assert mlflow.search_logged_models([run.info.experiment_id], output_format="list") == []
    assert mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss") == []
