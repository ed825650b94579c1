"""A run's splits as dataset inputs when many runs start at once on the same data, on both
tracking stores: the race for the dataset's row is made to happen for real (runs released
together into a fresh experiment), the store's refusal is recognised and retried, and every run
ends up with its three inputs."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from cifar_mlflow.tracking.datasets import CONTEXTS, RunDatasets, log_inputs

from .conftest import on_both_stores

RUNS = 8  # measured: 8 runs released together race for the row in most rounds, on both stores
ROUNDS = 5


def race(experiment_id: str, log: Callable[[str], None]) -> tuple[list[str], list[Exception]]:
    """RUNS new runs of the experiment, each in a thread, released together into `log(run_id)`;
    returns the run ids and what the threads raised."""
    client = MlflowClient()
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(RUNS)]
    gate = threading.Barrier(RUNS)
    errors: list[Exception] = []

    def one(run_id: str) -> None:
        gate.wait()
        try:
            log(run_id)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return run_ids, errors


@on_both_stores
def test_runs_racing_for_a_dataset_row_all_get_their_inputs(tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the store's answer, at once
    client = MlflowClient()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source")
        datasets = RunDatasets({
            split: mlflow.data.from_numpy(np.zeros((10, 4), np.uint8), source="/data",
                                          targets=np.arange(10), name=f"cifar10-{split}",
                                          digest=f"{split}-digest")
            for split in CONTEXTS
        })  # fmt: skip
    calls = []  # each MLflow log_input call: a retry makes more than one per split and run
    log_input = mlflow.log_input
    monkeypatch.setattr(mlflow, "log_input", lambda *a, **k: (calls.append(1), log_input(*a, **k)))

    def log(run_id: str) -> None:
        with mlflow.start_run(run_id=run_id):
            log_inputs(datasets)

    for round_ in range(ROUNDS):
        experiment_id = client.create_experiment(f"{tracking}-{round_}")
        mlflow.set_experiment(experiment_id=experiment_id)  # start_run(run_id) checks it
        run_ids, errors = race(experiment_id, log)
        assert errors == []
        for run_id in run_ids:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            digests = sorted(i.dataset.digest for i in inputs)
            assert digests == sorted(f"{split}-digest" for split in CONTEXTS)
        if len(calls) > len(CONTEXTS) * RUNS * (round_ + 1):
            return  # some runs lost the race, and their retry linked them to the winner's row
    raise AssertionError(f"no run lost the race in {ROUNDS} rounds of {RUNS}")
