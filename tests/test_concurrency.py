"""Four real training processes logging to one tracking server at once, in one experiment that
none of them has created yet: every metric, param and artifact of each reaches the server. The
trainings are as small as a training gets (one image per class, the smaller model), so the
processes spend their time where the promise is: opening runs, sending epochs, logging models."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.tracking.outbox import CHECKPOINT_EPOCH_TAG

from .conftest import tiny_train_args
from .processes import PER_EPOCH_KEYS, TrainingProcess, steps

RUNS = 4
TINIEST = ("--model", "ghost_resnet18", "--train-limit", "20", "--test-limit", "10",
           "--batch-size", "10")  # fmt: skip


@pytest.mark.slow
def test_four_concurrent_runs_lose_no_metric_and_no_artifact(image_folder, tracking, tmp_path):
    # One thread each: four processes on a small machine, no oversubscription.
    processes = [
        TrainingProcess(tiny_train_args(image_folder, tracking, *TINIEST, "--seed", str(seed)),
                        env={"OMP_NUM_THREADS": "1"})
        for seed in range(RUNS)
    ]  # fmt: skip
    for process in processes:
        assert process.wait(900) == 0, process.stderr

    runs = mlflow.search_runs(experiment_names=[tracking], output_format="list")
    assert sorted(r.data.params["seed"] for r in runs) == [str(s) for s in range(RUNS)]
    client = MlflowClient()
    for run in runs:
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        for key in PER_EPOCH_KEYS:
            assert steps(run_id, key) == [1, 2], (run_id, key)
        assert {"final_test_acc", "model_params", "model_flops"} <= set(run.data.metrics)
        assert len(run.data.params) >= 25 and run.data.tags[CHECKPOINT_EPOCH_TAG] == "2"
        # Its last checkpoint was sent, then removed once the run FINISHED.
        assert client.list_artifacts(run_id, "resume") == []
        model = mlflow.artifacts.download_artifacts(
            run.data.tags["model_uri"], dst_path=str(tmp_path / run_id)
        )
        assert (tmp_path / run_id / "MLmodel").exists(), model
