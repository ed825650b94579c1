"""Per-image outcomes of a run's checkpoints: the predicted class of every test and validation
image, logged as `predictions/<checkpoint>.npz` beside the split's dataset digest, so two runs
are known to have scored the very same images and can be compared image by image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARTIFACT_DIR = "predictions"
TAG = "predictions"  # comma-separated checkpoint names that have a predictions file


@dataclass(frozen=True)
class Predictions:
    """One checkpoint's predicted classes (uint8), per image in the dataset's order."""

    test_pred: np.ndarray
    test_label: np.ndarray
    test_digest: str
    val_pred: np.ndarray | None = None
    val_label: np.ndarray | None = None
    val_digest: str | None = None


def log_predictions(checkpoint: str, predictions: Predictions) -> None:
    """Log `predictions` as the active run's artifact `predictions/<checkpoint>.npz` and add
    `checkpoint` to the run's `predictions` tag."""
    raise NotImplementedError


def load_predictions(run_id: str, checkpoint: str) -> Predictions | None:
    """The predictions the run logged for `checkpoint`; None for a run that logged none."""
    raise NotImplementedError
