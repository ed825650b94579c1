"""Per-image outcomes of a run's checkpoints: the predicted class of every test and validation
image, logged as `predictions/<checkpoint>.npz` beside each split's dataset digest, so two runs
are known to have scored the very same images and can be compared image by image.

The file (np.savez_compressed, read with allow_pickle=False, so a hostile one cannot run code):
`test_pred`, `test_label` (uint8, one per test image in the dataset's order), `val_pred`,
`val_label` (the same for the validation images; absent without a validation split),
`test_digest`, `val_digest` (0-d unicode arrays: the digest logged on the run's dataset input
of that split, tracking.datasets.split_digest). The run's tag `predictions` lists the
checkpoints that have a file ("best,final"), so a reader needs no artifact listing.
Measured: ~3 kB per file for CIFAR-10's 10,000 test and 5,000 validation images.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..core.errors import UserError

ARTIFACT_DIR = "predictions"
TAG = "predictions"  # comma-separated checkpoint names that have a predictions file
SPLITS = ("test", "val")
PARTS = ("pred", "label", "digest")


class PredictionsUnreadable(UserError):
    """A run's predictions file that is not what this module writes (damaged, or not ours)."""


@dataclass(frozen=True, eq=False)
class Predictions:
    """One checkpoint's predicted class of each image (uint8), in the dataset's order, with the
    true classes and the digest of the split (equal digests: the very same images)."""

    test_pred: np.ndarray
    test_label: np.ndarray
    test_digest: str
    val_pred: np.ndarray | None = None
    val_label: np.ndarray | None = None
    val_digest: str | None = None

    def __post_init__(self) -> None:
        for split in SPLITS:
            pred, label, digest = (getattr(self, f"{split}_{k}") for k in PARTS)
            if split == "val" and pred is None and label is None and digest is None:
                continue  # a run without a validation split
            if pred is None or label is None or not isinstance(digest, str):
                raise ValueError(f"{split}: predictions, labels and a digest go together")
            if pred.dtype != np.uint8 or label.dtype != np.uint8:
                raise ValueError(f"{split}: classes are uint8, not {pred.dtype}/{label.dtype}")
            if pred.ndim != 1 or pred.shape != label.shape:
                raise ValueError(f"{split}: {pred.shape} predictions for {label.shape} labels")

    def correct(self, split: str) -> np.ndarray | None:
        """Whether each image of `split` ("test", "val") was classified right; None without."""
        pred = getattr(self, f"{split}_pred")
        return None if pred is None else pred == getattr(self, f"{split}_label")

    def accuracy(self, split: str) -> float | None:
        correct = self.correct(split)
        return None if correct is None else float(correct.mean())

    def arrays(self) -> dict[str, np.ndarray]:
        """The file's contents."""
        out = {}
        for split in SPLITS:
            if getattr(self, f"{split}_pred") is not None:
                out |= {f"{split}_pred": getattr(self, f"{split}_pred"),
                        f"{split}_label": getattr(self, f"{split}_label"),
                        f"{split}_digest": np.array(getattr(self, f"{split}_digest"))}  # fmt: skip
        return out


def log_predictions(checkpoint: str, predictions: Predictions, run_id: str | None = None) -> None:
    """Log `predictions` as the run's artifact `predictions/<checkpoint>.npz` and add
    `checkpoint` to its `predictions` tag; the run is `run_id`, else the active run."""
    run_id = run_id or mlflow.active_run().info.run_id
    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-") as tmp:
        path = Path(tmp) / f"{checkpoint}.npz"
        np.savez_compressed(path, **predictions.arrays())
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    logged = set(checkpoints(client.get_run(run_id).data.tags)) | {checkpoint}
    client.set_tag(run_id, TAG, ",".join(sorted(logged)))


def checkpoints(tags: Mapping[str, str]) -> tuple[str, ...]:
    """The checkpoints a run's tags say have predictions ((): a run that logged none)."""
    return tuple(name for name in tags.get(TAG, "").split(",") if name)


def load_predictions(run: str | Run, checkpoint: str) -> Predictions | None:
    """The predictions the run (its id, or the run as read already: no request to read it
    again) logged for `checkpoint`; None for a run that logged none for it (a run made before
    runs logged them: its run-level metrics are all there is). Raises PredictionsUnreadable for
    a file that is not a predictions file."""
    if isinstance(run, str):
        run = MlflowClient().get_run(run)
    if checkpoint not in checkpoints(run.data.tags):
        return None
    artifact = f"{ARTIFACT_DIR}/{checkpoint}.npz"
    what = f"run {run.info.run_id}'s {artifact}"
    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{run.info.artifact_uri}/{artifact}", dst_path=tmp
            )
        except (MlflowException, OSError) as e:
            raise PredictionsUnreadable(f"{what} cannot be read: {e}") from None
        return read_file(Path(path), what)


def read_file(path: Path, what: str) -> Predictions:
    """A predictions file read back, checked; `what` names it in the error."""
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
        digests = {k: _text(fields.pop(k)) for k in ("test_digest", "val_digest") if k in fields}
        return Predictions(**fields, **digests)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as e:
        raise PredictionsUnreadable(f"{what} is not a predictions file: {e}") from None


def _text(array: np.ndarray) -> str:
    if array.ndim != 0 or array.dtype.kind != "U":
        raise ValueError(f"a digest is a 0-d string, not {array.dtype} of shape {array.shape}")
    return str(array[()])
