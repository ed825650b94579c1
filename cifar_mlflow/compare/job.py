"""`cifar-mlflow compare`'s work: read the selected training runs (tracking.training_runs), group them
into configurations and comparisons (study.py), draw and write the report (report.py, charts.py)
in a temporary folder, each file logged to the compare run as soon as it is whole, and only then
move it into the output folder: a failure leaves no half report there, and the compare run
marked FAILED, not FINISHED.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.files import writable_folder
from ..core.redaction import redacted
from ..tracking import connection, records
from ..tracking.connection import is_http
from ..tracking.history import fetch_histories
from ..tracking.predictions import (
    Predictions,
    PredictionsUnreadable,
    checkpoints,
    load_predictions,
)
from ..tracking.runs import (
    FAILURE_TAG,
    JOB_TAG,
    TUNED_FROM_TAG,
    RunSpec,
    get_run,
    tracked_run,
    ui_route,
)
from ..tracking.training_runs import (  # training_runs: bench/bench_compare.py reads it here
    Selection,
    SelectionError,
    select_training_runs,
    training_runs,  # noqa: F401
)
from . import report
from .stats import MIN_EFFECT
from .study import Curve, Outcomes, RunRecord, effective_config

if TYPE_CHECKING:
    from mlflow.entities import Run

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "epoch_seconds")  # fmt: skip
# The compare run's own counts: tags, so the experiment's charts hold training metrics only.
COUNT_TAGS = {"runs": "compare.runs", "configurations": "compare.configurations",
              "comparisons": "compare.comparisons"}  # fmt: skip


# Predictions files are downloaded this many at a time: each is a few small requests.
PREDICTION_THREADS = 16


def load_outcomes(runs: list[Run]) -> dict[str, dict[str, Outcomes]]:
    """{run id: {checkpoint: outcomes}} at the checkpoint each run's headline is judged at
    (`best` with validation, else `final`), for the runs whose `predictions` tag lists it,
    downloaded in parallel; a file that cannot be read is left out, with a warning. measured:
    both checkpoints (for the final-accuracy claims too) took 11 s for 100 runs under load."""
    wanted = [
        (run, checkpoint)
        for run in runs
        for checkpoint in ["best" if "val_acc" in run.data.metrics else "final"]
        if checkpoint in checkpoints(run.data.tags)
    ]
    if not wanted:
        return {}

    def load(key: tuple[Run, str]) -> Predictions | None:
        try:
            return load_predictions(*key)
        except PredictionsUnreadable as e:
            warnings.warn(f"{e}: compared on its run-level metrics only", stacklevel=1)
            return None

    outcomes: dict[str, dict[str, Outcomes]] = {}
    with ThreadPoolExecutor(min(PREDICTION_THREADS, len(wanted))) as pool:
        for (run, checkpoint), predictions in zip(wanted, pool.map(load, wanted)):
            if predictions is not None:
                outcomes.setdefault(run.info.run_id, {})[checkpoint] = Outcomes(
                    predictions.correct("test"), predictions.test_digest)
    return outcomes


def load_records(runs: list[Run]) -> list[RunRecord]:
    """RunRecords of the runs that logged at least one epoch (a run killed at start has none),
    with their per-image outcomes where they logged them (downloaded while the histories are
    fetched: both wait on the server)."""
    with ThreadPoolExecutor(1) as side:
        outcomes_of = side.submit(load_outcomes, runs)
        histories = fetch_histories([r.info.run_id for r in runs], HISTORY_KEYS)
        outcomes = outcomes_of.result()
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
            model_params=_int(params.get("model_params")),
            history={key: Curve.of(points) for key, points in history.items()},
            test_images=_int(params.get("test_images")),
            tuned_from=run.data.tags.get(TUNED_FROM_TAG) or None,
            experiment_id=run.info.experiment_id,
            outcomes=outcomes.get(run.info.run_id, {}),
        ))  # fmt: skip
    return records


def _without_epochs(runs: list[Run], loaded: list[RunRecord]) -> str:
    """'' or which selected runs are left out for logging no epoch (one that diverged or was
    stopped in its first epoch), with their status and reason."""
    kept = {r.run_id for r in loaded}
    missing = [r for r in runs if r.info.run_id not in kept]
    if not missing:
        return ""
    said = "; ".join(
        f"{r.info.run_name or r.info.run_id} {r.info.status}"
        + (f": {r.data.tags[FAILURE_TAG][:120]}" if FAILURE_TAG in r.data.tags else "")
        for r in missing[:5]
    )
    more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"left out {len(missing)} run(s) that logged no epoch ({said}{more})"


def _int(value: str | None) -> int | None:
    return int(float(value)) if value else None


def run_compare(
    selection: Selection, output_dir: str | os.PathLike, into_run: str | None = None,
    min_effect: float = MIN_EFFECT,
) -> tuple[str, dict[str, int]]:  # fmt: skip
    """Compare the selected training runs; returns the compare run's id and what it holds.
    With `into_run` (a sweep's parent run) the report is logged there instead, and that run's
    status is left to its owner. `min_effect`: the smallest accuracy difference of interest (a
    fraction)."""
    output = Path(output_dir)
    writable_folder(output, "--output-dir")
    writable_folder(output.resolve().parent, "--output-dir's folder")  # the report is made there
    uri = redacted(connection.connect())  # shown in the report and the description
    selected = select_training_runs(selection)
    runs = selected.runs
    loaded = load_records(runs)
    if not loaded:
        raise SelectionError(
            f"none of the {len(runs)} selected runs in {selection.experiment!r} has logged an "
            "epoch yet"
        )
    left_out = [x for x in (selected.left_out(), _without_epochs(runs, loaded)) if x]
    for note in left_out:
        warnings.warn(note, stacklevel=1)
    described = (
        f"Experiment `{selection.experiment}` on `{uri}`"
        + (f", filter `{selection.filter}`" if selection.filter else "")
        + (f", sweep `{selection.sweep}`" if selection.sweep else "")
        + ("" if selection.include_unfinished else ", finished runs")
        + "".join(f" ({note})" for note in left_out)
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        folder = Path(tmp)
        if into_run:
            counts = _write_and_upload(loaded, folder, described, into_run, uri, min_effect)
            run_id = into_run
        else:
            params = {"experiment": selection.experiment, "filter": selection.filter,
                      "sweep": selection.sweep, "include_unfinished": selection.include_unfinished,
                      "min_effect": min_effect * 100}  # fmt: skip
            spec = RunSpec(selection.experiment, "compare", {JOB_TAG: "compare"}, params)
            with tracked_run(spec) as run_id:
                counts = _write_and_upload(loaded, folder, described, run_id, uri, min_effect)
        _replace_report(folder, output)
    return run_id, counts


def _write_and_upload(
    runs: list[RunRecord], folder: Path, described: str, run_id: str, uri: str,
    min_effect: float,
) -> dict[str, int]:  # fmt: skip
    """Write the report, each file uploaded once whole; then the summary as the run's
    description and the counts as its tags."""

    def ui_href(run: RunRecord) -> str:  # the UI's own route: works in its Markdown views
        return ui_route(run.experiment_id, run.run_id)

    def file_href(run: RunRecord) -> str | None:  # from a file, the server's address is needed
        return f"{uri.rstrip('/')}/{ui_href(run)}" if is_http(uri) else None

    experiment_id = get_run(run_id).info.experiment_id

    def artifact_href(path: str) -> str:  # the run's artifact viewer, a route like ui_href
        return ui_route(experiment_id, run_id, f"artifacts/{path}")

    with records.Uploads(run_id, folder) as upload:
        written = report.write_report(runs, folder, described, upload, file_href, ui_href,
                                      artifact_href, min_effect)  # fmt: skip
    records.set_description(run_id, written.summary)
    records.set_tags(run_id, {COUNT_TAGS[k]: v for k, v in written.counts.items()})
    return written.counts


def _replace_report(new: Path, output: Path) -> None:
    """Move a finished report into `output`. A previous report there (it has report.md) loses its
    figure folders first, so no stale figure survives; other files in `output` are left alone."""
    output.mkdir(parents=True, exist_ok=True)
    if (output / "report.md").exists():
        for folder in ("comparisons", "runs"):
            shutil.rmtree(output / folder, ignore_errors=True)
    for item in new.iterdir():
        os.replace(item, output / item.name)
