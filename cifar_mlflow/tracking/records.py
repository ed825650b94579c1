"""What a command records into its own run besides its params and tags (runs.RunSpec): metrics,
files (each uploaded as soon as it is whole), figures, tables and the run's description."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from ..core.background import Background
from ..core.redaction import redacted

if TYPE_CHECKING:
    from matplotlib.figure import Figure

UPLOAD_THREADS = 2


def set_tags(run_id: str, tags: Mapping[str, object]) -> None:
    tags = [RunTag(k, redacted(str(v))) for k, v in tags.items()]
    MlflowClient().log_batch(run_id, tags=tags)


def set_description(run_id: str, markdown: str) -> None:
    """The run's description: Markdown its Overview page shows (the tag `mlflow.note.content`)."""
    MlflowClient().set_tag(run_id, MLFLOW_RUN_NOTE, redacted(markdown))


def log_folder(run_id: str, folder: Path, artifact_path: str | None = None) -> None:
    MlflowClient().log_artifacts(run_id, str(folder), artifact_path)


def log_figure(run_id: str, figure: Figure, artifact_file: str) -> None:
    MlflowClient().log_figure(run_id, figure, artifact_file)


def log_table(run_id: str, table: Mapping[str, list], artifact_file: str) -> None:
    # The fluent call, not the client's: it also tags the run so that mlflow.load_table finds it.
    mlflow.log_table(dict(table), artifact_file, run_id=run_id)


class Uploads(Background):
    """Files under `root` logged to `run_id` in the background, at their path relative to
    `root`, so uploading (server-bound) overlaps whatever makes the next file (CPU-bound).
    Leaving the block waits for every upload; the first that failed raises."""

    def __init__(self, run_id: str, root: Path):
        super().__init__(UPLOAD_THREADS, "upload")
        self.run_id, self.root = run_id, root
        self.client = MlflowClient()

    def __call__(self, path: Path) -> None:
        where = path.parent.relative_to(self.root).as_posix()
        self.submit(self.client.log_artifact, self.run_id, str(path),
                    None if where == "." else where)  # fmt: skip
