"""`cifar-mlflow compare`: the tracked training runs of an experiment as the study's charts and table.

Training runs are read from MLflow into study.RunRecords, grouped into configurations and
comparisons (study.py), drawn (charts.py) and written up (report.py) in a temporary folder, each
file logged to the compare run as soon as it is whole, and only then moved into --output-dir: a
failure leaves no half report there, and the compare run marked FAILED, not FINISHED.

Histories are fetched with MLflow's bulk endpoint: one HTTP call per metric for up to 100 runs
instead of one per run and metric (measured in docs/compare-benchmark.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

from . import report, tracking
from .config import DEFAULT_EXPERIMENT
from .errors import UserError
from .study import Curve, RunRecord, effective_config

HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds")
SWEEP_TAG = "sweep_id"
JOB_TAG = {"job": "compare"}
DEFAULT_OUTPUT_DIR = "outputs/compare"

# MLflow's bulk history endpoint (server/handlers.py, 3.17): at most 100 runs and 25,000 points
# per reply; a reply of exactly 25,000 may have been cut short, so that chunk is split.
BULK_HISTORY_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_MAX_RUNS = 100
BULK_MAX_POINTS = 25_000
FETCH_THREADS = 4  # the calls are I/O-bound; measured: 4 threads vs 1 in docs/compare-benchmark.md
UPLOAD_THREADS = 2


class CompareError(UserError):
    """Nothing to compare, or a selection MLflow cannot answer; the message says what to do."""


def select_runs(
    client: MlflowClient, experiment: str, filter_string: str, sweep: str | None,
    include_unfinished: bool,
) -> list[mlflow.entities.Run]:  # fmt: skip
    """Training runs only: the `model` tag marks them, so compare's own runs never count."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(
            f"experiment {experiment!r} does not exist on {tracking.tracking_uri()}: "
            "name one that holds training runs with --experiment"
        )
    clauses = [filter_string.strip()] if filter_string.strip() else []
    clauses.append("tags.model IS NOT NULL")
    if sweep is not None:
        if "'" in sweep:
            raise CompareError(f"--sweep {sweep!r}: a sweep id cannot contain a quote")
        clauses.append(f"tags.{SWEEP_TAG} = '{sweep}'")
    if not include_unfinished:
        clauses.append(f"attributes.status = '{RunStatus.to_string(RunStatus.FINISHED)}'")
    try:
        runs = mlflow.search_runs(
            [found.experiment_id], " AND ".join(clauses), output_format="list"
        )
    except MlflowException as e:
        first_line = str(e.message).strip().splitlines()[0]
        if filter_string.strip():
            raise CompareError(f"--filter {filter_string!r} was refused: {first_line}") from None
        raise CompareError(f"searching experiment {experiment!r} failed: {first_line}") from None
    runs = [r for r in runs if "model" in r.data.params]
    if not runs:
        what = "finished training runs" if not include_unfinished else "training runs"
        where = " and ".join(
            x for x in (filter_string and f"--filter {filter_string!r}",
                        sweep and f"--sweep {sweep!r}") if x
        )  # fmt: skip
        raise CompareError(
            f"no {what} in experiment {experiment!r}{' matching ' + where if where else ''}: "
            "train some first, or widen the selection"
        )
    return runs


def fetch_histories(
    client: MlflowClient, run_ids: list[str], keys: Iterable[str] = HISTORY_KEYS
) -> dict[str, dict[str, Curve]]:
    """{run_id: {key: Curve}} for every run and key. Over HTTP, one bulk call per key and 100 runs
    (falling back to one call per run and key where a server lacks the endpoint); other stores
    (sqlite, files) are read per run and key."""
    over_http = client.tracking_uri.startswith(("http://", "https://"))
    chunks = [run_ids[i : i + BULK_MAX_RUNS] for i in range(0, len(run_ids), BULK_MAX_RUNS)]
    fetch = _bulk_history if over_http else _history_each_run
    points: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        jobs = [(key, chunk) for key in keys for chunk in chunks]
        for (key, _), found in zip(jobs, pool.map(lambda job: fetch(client, *job), jobs)):
            for run_id, step, value in found:  # in logging order: a re-logged step keeps the last
                points[run_id][key][step] = value
    return {
        run_id: {
            key: Curve(np.array(sorted(steps), int), np.array([steps[s] for s in sorted(steps)]))
            for key, steps in by_key.items()
        }
        for run_id, by_key in points.items()
    }


def _bulk_history(client: MlflowClient, key: str, run_ids: list[str]) -> list[tuple]:
    response = http_request(
        get_default_host_creds(client.tracking_uri), BULK_HISTORY_ENDPOINT, "GET",
        params={"run_id": run_ids, "metric_key": key, "max_results": BULK_MAX_POINTS},
    )  # fmt: skip
    if response.status_code == 404:  # not an MLflow OSS server
        return _history_each_run(client, key, run_ids)
    metrics = verify_rest_response(response, BULK_HISTORY_ENDPOINT).json().get("metrics", [])
    if len(metrics) >= BULK_MAX_POINTS:  # possibly cut short: ask for halves
        if len(run_ids) == 1:
            return _history_each_run(client, key, run_ids)
        half = len(run_ids) // 2
        first, second = run_ids[:half], run_ids[half:]
        return _bulk_history(client, key, first) + _bulk_history(client, key, second)
    return [(m["run_id"], int(m["step"]), float(m["value"])) for m in metrics]


def _history_each_run(client: MlflowClient, key: str, run_ids: list[str]) -> list[tuple]:
    found = []
    for run_id in run_ids:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        found.extend((run_id, m.step, m.value) for m in history)
    return found


def load_records(runs: list[mlflow.entities.Run], client: MlflowClient) -> list[RunRecord]:
    """RunRecords of the runs that logged at least one epoch (a run killed at start has none)."""
    histories = fetch_histories(client, [r.info.run_id for r in runs])
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
            history=history,
        ))  # fmt: skip
    return records


@contextlib.contextmanager
def compare_run(experiment: str, params: dict[str, object]) -> Iterator[mlflow.ActiveRun]:
    """The run `mlflow run -e compare` made, else a new one beside the compared runs, with
    `params`. Tagged job=compare (no `model` tag, so never compared itself). Opened and ended as
    tracking.training_run does its runs: FINISHED, or FAILED / KILLED with a failure_reason."""
    run_id = tracking.launched_run_id()
    if run_id:
        mlflow.set_experiment(experiment_id=tracking.get_run(run_id).info.experiment_id)
        run = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(JOB_TAG)
        # `mlflow run` has logged its parameters already, as typed ("false"): keep those.
        logged = mlflow.get_run(run_id).data.params
        params = {k: v for k, v in params.items() if k not in logged}
    else:
        found = mlflow.set_experiment(experiment)
        run = mlflow.start_run(experiment_id=found.experiment_id, run_name="compare", tags=JOB_TAG)
    try:
        mlflow.log_params(params)
        yield run
    except KeyboardInterrupt as e:
        tracking._end_unfinished(RunStatus.KILLED, e)
        raise
    except BaseException as e:
        tracking._end_unfinished(RunStatus.FAILED, e)
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def run_compare(
    experiment: str = DEFAULT_EXPERIMENT, filter_string: str = "", sweep: str | None = None,
    include_unfinished: bool = False, output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    into_run: str | None = None,
) -> tuple[str, dict[str, int]]:  # fmt: skip
    """Compare the selected training runs; returns the compare run's id and what it holds.
    With `into_run` (a sweep's parent run) the report is logged there instead, and that run's
    status is left to its owner."""
    uri = tracking.connect()
    client = MlflowClient()
    runs = select_runs(client, experiment, filter_string, sweep, include_unfinished)
    records = load_records(runs, client)
    if not records:
        raise CompareError(
            f"none of the {len(runs)} selected runs in {experiment!r} has logged an epoch yet"
        )
    selection = {"experiment": experiment, "filter": filter_string, "sweep": sweep or "",
                 "include_unfinished": include_unfinished}  # fmt: skip
    described = (
        f"Experiment `{experiment}` on `{uri}`"
        + "".join(f", {k} `{v}`" for k, v in selection.items() if k in ("filter", "sweep") and v)
        + ("" if include_unfinished else ", finished runs")
    )
    output = Path(output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        if into_run:
            counts = _write_and_upload(records, Path(tmp), described, client, into_run)
            for key, value in counts.items():
                client.log_metric(into_run, key, value)
            run_id = into_run
        else:
            with compare_run(experiment, selection) as run:
                counts = _write_and_upload(records, Path(tmp), described, client, run.info.run_id)
                mlflow.log_metrics(counts)
            run_id = run.info.run_id
        _replace_report(Path(tmp), output)
    return run_id, counts


def _write_and_upload(
    records: list[RunRecord], folder: Path, described: str, client: MlflowClient, run_id: str
) -> dict[str, int]:
    """Write the report into `folder`, each file logged to the run as soon as it is whole: the
    uploads (server-bound) overlap the drawing (CPU-bound)."""
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        uploads = []

        def upload(path: Path) -> None:
            where = path.parent.relative_to(folder).as_posix()
            artifact_path = None if where == "." else where
            uploads.append(pool.submit(client.log_artifact, run_id, str(path), artifact_path))

        counts = report.write_report(records, folder, described, upload)
        for done in uploads:
            done.result()  # an upload's error fails the compare run
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


@click.command()
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True,
              help="the experiment whose training runs are compared")  # fmt: skip
@click.option("--filter", "filter_string", default="", metavar="FILTER",
              help="an MLflow search filter, e.g. \"params.epochs = '40'\"")  # fmt: skip
@click.option("--sweep", default="", help="only the runs of this sweep (tag sweep_id)")
@click.option("--include-unfinished", type=click.BOOL, is_flag=False, flag_value="true",
              default=False, show_default=True,
              help="count RUNNING, FAILED and KILLED runs too (`--include-unfinished` alone: true)")  # fmt: skip
@click.option("--output-dir", type=click.Path(file_okay=False), default=DEFAULT_OUTPUT_DIR,
              show_default=True, help="where the charts, table and report.md are written")  # fmt: skip
def command(experiment, filter_string, sweep, include_unfinished, output_dir) -> None:
    """Chart and tabulate the training runs of an experiment, and log it all to a compare run."""
    run_id, counts = run_compare(experiment, filter_string, sweep or None, include_unfinished,
                                 output_dir)  # fmt: skip
    click.echo(
        f"compared {counts['runs']} runs in {counts['configurations']} configurations "
        f"({counts['comparisons']} comparison charts): {Path(output_dir) / 'report.md'}, "
        f"logged to run {run_id}"
    )
