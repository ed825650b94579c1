"""A run's data as MLflow datasets: the train, validation and test splits logged as the run's
inputs (name, digest, image counts in the profile), so they show in the UI's Datasets column
and a later command can tell whether it holds the very images a run was scored on."""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from dataclasses import dataclass

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from ..core.data import Cifar10, Split, source_folder

# The run's inputs carry a context tag; MLflow's UI shows it beside the dataset's name.
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
# How the server's store refuses a row that another request has just inserted: sqlite's words,
# then PostgreSQL's (the server passes the database's error text on, with BAD_REQUEST).
DUPLICATE_ROW = re.compile(
    r"UNIQUE constraint failed|duplicate key value violates unique constraint"
)


def dataset_name(split: str) -> str:
    """The name of a split's dataset ("train", "val", "test"), on the run's inputs and on the
    metrics measured on it."""
    return f"cifar10-{split}"


def metric_split(key: str) -> str | None:
    """The split a training metric was measured on: `val_*` and `best_val_acc` on validation,
    `test_*` and `final_test_acc` on test; None for the others (training, timing, size)."""
    for split in ("val", "test"):
        if key.startswith(f"{split}_") or f"_{split}_" in key:
            return split
    return None


def split_digest(split: Split) -> str:
    """A content hash of the images and labels: equal digests mean the very same images.
    Measured: blake2b over 45,000 images (138 MB) takes ~0.2 s on one core here."""
    h = hashlib.blake2b(digest_size=8)
    h.update(split.images.tobytes())
    h.update(split.labels.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class RunDatasets:
    by_split: dict[str, Dataset]  # "train", "val" (when there is a validation split), "test"

    @property
    def digest(self) -> str:
        """One digest for the whole data of a run: its splits' digests, in order."""
        joined = ",".join(f"{name}:{d.digest}" for name, d in self.by_split.items())
        return hashlib.blake2b(joined.encode(), digest_size=8).hexdigest()


def run_datasets(data: Cifar10) -> RunDatasets:
    folder = source_folder(data.source)
    with warnings.catch_warnings():
        # MLflow 3.17 registers its local-artifact source twice, so a local path "can be
        # interpreted in multiple ways": both ways are the same class of source.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        return RunDatasets({
            name: mlflow.data.from_numpy(split.images, source=folder, targets=split.labels,
                                         name=dataset_name(name), digest=split_digest(split))
            for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
            if split is not None
        })  # fmt: skip


def logged_digest(run: Run, split: str) -> str | None:
    """The digest of the `split` ("train", "val", "test") that `run` logged as an input."""
    for entry in run.inputs.dataset_inputs if run.inputs else []:
        if any(t.key == "mlflow.data.context" and t.value == CONTEXTS[split] for t in entry.tags):
            return entry.dataset.digest
    return None


def log_inputs(datasets: RunDatasets) -> None:
    """The splits as inputs of the active run, and their joint digest as a param."""
    for name, dataset in datasets.by_split.items():
        _log_input(dataset, CONTEXTS[name])
    mlflow.log_param("data_digest", datasets.digest)


def is_duplicate_row(error: MlflowException) -> bool:
    return DUPLICATE_ROW.search(str(error)) is not None


def _log_input(dataset: Dataset, context: str, tries: int = 3) -> None:
    """Runs that start together on the same data (a sweep's children) race to create the same
    dataset row, in sqlite and in PostgreSQL alike (tests/test_datasets.py makes the race
    happen): the store refuses the loser's row as a duplicate. The winner's row is there by
    then, so trying again links to it."""
    for attempt in range(tries):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as e:
            if attempt == tries - 1 or not is_duplicate_row(e):
                raise
            time.sleep(0.2 * (attempt + 1))


def data_changes(run: Run, data: Cifar10) -> str | None:
    """What differs between `data` and the splits `run` logged as its inputs ("the train split
    (48 images, the run had 50)"), or None when they are the same images, or the run logged
    none to compare with."""
    changed = []
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        logged = logged_digest(run, name)
        now = split_digest(split) if split is not None else None
        if logged is None and now is None:
            continue
        if logged is None and not any(logged_digest(run, s) for s in CONTEXTS):
            return None  # a run from before its inputs were logged: nothing to compare with
        if logged != now:
            before = run.data.params.get(f"{name}_images")
            size = len(split) if split is not None else 0
            counted = f"{size} images, the run had {before}" if before else f"{size} images"
            changed.append(f"the {CONTEXTS[name]} split ({counted}; digest {logged} -> {now})")
    return "; ".join(changed) or None
