"""A training run's per-image predictions, read back: `predictions/<checkpoint>.npz` artifacts
(numpy arrays only, read with allow_pickle=False: a file we read can be hostile), listed in the
run's `predictions` tag."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np

PREDICTIONS_TAG = "predictions"  # the checkpoints a run logged predictions for: "best,final"


@dataclass(frozen=True)
class Predictions:
    test_pred: np.ndarray
    test_label: np.ndarray
    val_pred: np.ndarray | None
    val_label: np.ndarray | None
    test_digest: str
    val_digest: str


def artifact_path(checkpoint: str) -> str:
    return f"predictions/{checkpoint}.npz"


def load_predictions(run_id: str, checkpoint: str) -> Predictions | None:
    """The run's predictions at `checkpoint`; None when it logged none there or the file is not
    a well-formed predictions file."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact_path(checkpoint), dst_path=folder
            )
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (MlflowException, OSError, ValueError):
            return None
    test_pred, test_label = arrays.get("test_pred"), arrays.get("test_label")
    if test_pred is None or test_label is None or test_pred.shape != test_label.shape:
        return None
    return Predictions(test_pred, test_label, arrays.get("val_pred"), arrays.get("val_label"),
                       str(arrays.get("test_digest", "")), str(arrays.get("val_digest", "")))
