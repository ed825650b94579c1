"""`cifar-mlflow compare`'s work: read the selected training runs (tracking.history), group them
into configurations and comparisons (study.py), draw and write the report (report.py, charts.py)
in a temporary folder, each file logged to the compare run as soon as it is whole, and only then
move it into the output folder: a failure leaves no half report there, and the compare run
marked FAILED, not FINISHED.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..tracking import connection, records
from ..tracking.history import Selection, SelectionError, fetch_histories, training_runs
from ..tracking.runs import JOB_TAG, RunSpec, tracked_run
from . import report
from .study import Curve, RunRecord, effective_config

if TYPE_CHECKING:
    from mlflow.entities import Run

HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds")


def load_records(runs: list[Run]) -> list[RunRecord]:
    """RunRecords of the runs that logged at least one epoch (a run killed at start has none)."""
    histories = fetch_histories([r.info.run_id for r in runs], HISTORY_KEYS)
    records = []
    for run in runs:
        history = histories.get(run.info.run_id, {})
        if "test_acc" not in history:
            continue
        params = run.data.params
        records.append(RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id,
            config=effective_config(params, run.data.tags),
            seed=int(float(params.get("seed", 0))),
            model_params=int(float(params["model_params"])) if "model_params" in params else None,
            history={key: Curve.of(points) for key, points in history.items()},
        ))  # fmt: skip
    return records


def run_compare(
    selection: Selection, output_dir: str | os.PathLike, into_run: str | None = None
) -> tuple[str, dict[str, int]]:
    """Compare the selected training runs; returns the compare run's id and what it holds.
    With `into_run` (a sweep's parent run) the report is logged there instead, and that run's
    status is left to its owner."""
    uri = connection.connect()
    runs = training_runs(selection)
    loaded = load_records(runs)
    if not loaded:
        raise SelectionError(
            f"none of the {len(runs)} selected runs in {selection.experiment!r} has logged an "
            "epoch yet"
        )
    described = (
        f"Experiment `{selection.experiment}` on `{uri}`"
        + (f", filter `{selection.filter}`" if selection.filter else "")
        + (f", sweep `{selection.sweep}`" if selection.sweep else "")
        + ("" if selection.include_unfinished else ", finished runs")
    )
    output = Path(output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        folder = Path(tmp)
        if into_run:
            counts = _write_and_upload(loaded, folder, described, into_run)
            run_id = into_run
        else:
            params = {"experiment": selection.experiment, "filter": selection.filter,
                      "sweep": selection.sweep, "include_unfinished": selection.include_unfinished}  # fmt: skip
            spec = RunSpec(selection.experiment, "compare", {JOB_TAG: "compare"}, params)
            with tracked_run(spec) as run_id:
                counts = _write_and_upload(loaded, folder, described, run_id)
        _replace_report(folder, output)
    return run_id, counts


def _write_and_upload(
    runs: list[RunRecord], folder: Path, described: str, run_id: str
) -> dict[str, int]:
    with records.Uploads(run_id, folder) as upload:
        counts = report.write_report(runs, folder, described, upload)
    records.log_metrics(run_id, counts)
    return counts


def _replace_report(new: Path, output: Path) -> None:
    """Move a finished report into `output`. A previous report there (it has report.md) loses its
    figure folders first, so no stale figure survives; other files in `output` are left alone."""
    output.mkdir(parents=True, exist_ok=True)
    if (output / "report.md").exists():
        for folder in ("comparisons", "runs"):
            shutil.rmtree(output / folder, ignore_errors=True)
    for item in new.iterdir():
        os.replace(item, output / item.name)
