"""A real divergence: SGD at lr 1e30 makes the weights overflow and the loss NaN within a few
steps. The run stops within the epoch, is FAILED with a reason, and stays out of compare/export."""

from __future__ import annotations

import mlflow
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.core.engine import DIVERGENCE_CHECK_STEPS
from cifar_mlflow.tracking.runs import FAILURE_TAG

from .conftest import tiny_train_args
from .processes import SMALL_RUN

BATCH_SIZE = 2  # 48 images: 24 steps, so the in-loop check (every 20 steps) fires before the end


def test_nan_loss_stops_the_run_within_the_epoch_and_marks_it_failed(
    image_folder, tracking, tmp_path
):
    result = CliRunner().invoke(
        cli,
        tiny_train_args(image_folder, tracking, *SMALL_RUN, "--epochs", "40", "--lr", "1e30",
                        "--batch-size", str(BATCH_SIZE), "--val-size", "0"),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    images = DIVERGENCE_CHECK_STEPS * BATCH_SIZE
    expected = (
        f"training diverged: the loss became nan in epoch 1 (within its first {images} images)"
    )
    assert f"error: {expected}" in result.output

    [run] = mlflow.search_runs(experiment_names=[tracking], output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_TAG].startswith(expected)
    client = MlflowClient()
    assert client.get_metric_history(run.info.run_id, "train_loss") == []
    assert "model_uri" not in run.data.tags

    for command in (
        ["compare", "--output-dir", str(tmp_path / "report")],
        ["export", "--data-dir", str(image_folder)],
    ):
        listed = CliRunner().invoke(cli, [*command, "--experiment", tracking])
        assert listed.exit_code == 1, listed.output
        assert "no finished" in listed.output.lower() and run.info.run_id not in listed.output
