"""What compare reads back: the training runs of an experiment, and their metric histories.

Histories are fetched with the tracking server's bulk endpoint (the one MLflow's own UI charts
with; the Python client has no bulk call): one HTTP call per metric for up to 100 runs instead of
one per run and metric (measured in docs/compare-benchmark.md). Other stores (sqlite, files) are
read per run and metric.
"""

from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

from ..core.errors import UserError
from .connection import is_http, tracking_uri
from .runs import FINISHED, SWEEP_TAG

# MLflow's bulk history endpoint (server/handlers.py, 3.17): at most 100 runs and 25,000 points
# per reply; a reply of exactly 25,000 may have been cut short, so that chunk is split.
BULK_HISTORY_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_MAX_RUNS = 100
BULK_MAX_POINTS = 25_000
FETCH_THREADS = 4  # the calls are I/O-bound; measured: 4 threads vs 1 in docs/compare-benchmark.md


class SelectionError(UserError):
    """Nothing to compare, or a selection MLflow cannot answer; the message says what to do."""


@dataclass(frozen=True)
class Selection:
    """Which training runs to read: those of `experiment`, narrowed by an MLflow search filter
    and a sweep id, FINISHED only unless `include_unfinished`."""

    experiment: str
    filter: str = ""
    sweep: str = ""
    include_unfinished: bool = False

    def describe(self) -> str:
        narrowed = [f"--filter {self.filter!r}" if self.filter.strip() else "",
                    f"--sweep {self.sweep!r}" if self.sweep else ""]  # fmt: skip
        return " and ".join(x for x in narrowed if x)


def training_runs(selection: Selection) -> list[Run]:
    """The selected training runs: the `model` tag marks them, so compare's and export's own
    runs never count."""
    client = MlflowClient()
    found = client.get_experiment_by_name(selection.experiment)
    if found is None:
        raise SelectionError(
            f"experiment {selection.experiment!r} does not exist on {tracking_uri()}"
            + (where_training_runs_are(selection.experiment)
               or ": name one that holds training runs with --experiment")
        )  # fmt: skip
    clauses = [selection.filter.strip()] if selection.filter.strip() else []
    clauses.append("tags.model IS NOT NULL")
    if selection.sweep:
        if "'" in selection.sweep:
            raise SelectionError(f"--sweep {selection.sweep!r}: a sweep id cannot contain a quote")
        clauses.append(f"tags.{SWEEP_TAG} = '{selection.sweep}'")
    if not selection.include_unfinished:
        clauses.append(f"attributes.status = '{FINISHED}'")
    try:
        runs = mlflow.search_runs(
            [found.experiment_id], " AND ".join(clauses), output_format="list"
        )
    except MlflowException as e:
        first_line = str(e.message).strip().splitlines()[0]
        if selection.filter.strip():
            raise SelectionError(
                f"--filter {selection.filter!r} was refused: {first_line}"
            ) from None
        raise SelectionError(
            f"searching experiment {selection.experiment!r} failed: {first_line}"
        ) from None
    runs = [r for r in runs if "model" in r.data.params]
    if not runs:
        what = "training runs" if selection.include_unfinished else "finished training runs"
        where = selection.describe()
        elsewhere = "" if where else where_training_runs_are(selection.experiment)
        raise SelectionError(
            f"no {what} in experiment {selection.experiment!r}"
            f"{' matching ' + where if where else ''}"
            + (elsewhere or ": train some first, or widen the selection")
        )
    return runs


def result_test_acc(metrics: Mapping[str, float]) -> float | None:
    """A finished run's test accuracy as a result: at its best-validation epoch
    (test_acc_at_best), else at its last epoch (final_test_acc); None for a run without them."""
    return metrics.get("test_acc_at_best", metrics.get("final_test_acc"))


def where_training_runs_are(excluding: str) -> str:
    """'; training runs are in experiment 'Default' (3 runs): pass --experiment Default', naming
    the experiments other than `excluding` that hold training runs (`mlflow run` without
    --experiment-name files them in 'Default'); '' when there are none."""
    client = MlflowClient()
    names = {e.experiment_id: e.name for e in client.search_experiments() if e.name != excluding}
    if not names:
        return ""
    runs = client.search_runs(list(names), "tags.model IS NOT NULL", max_results=1000)
    counts = Counter(names[r.info.experiment_id] for r in runs)
    if not counts:
        return ""
    listed = ", ".join(f"{name!r} ({n} runs)" for name, n in counts.most_common(3))
    first = counts.most_common(1)[0][0]
    return f"; training runs are in experiment {listed}: pass --experiment {shlex.quote(first)}"


History = dict[int, float]  # {step: value}, in step order


def fetch_histories(run_ids: list[str], keys: Iterable[str]) -> dict[str, dict[str, History]]:
    """{run_id: {key: {step: value}}} for every run and key that has points; a step logged
    twice keeps its last value."""
    client = MlflowClient()
    fetch = _bulk_history if is_http(client.tracking_uri) else _history_each_run
    chunks = [run_ids[i : i + BULK_MAX_RUNS] for i in range(0, len(run_ids), BULK_MAX_RUNS)]
    points: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        jobs = [(key, chunk) for key in keys for chunk in chunks]
        for (key, _), found in zip(jobs, pool.map(lambda job: fetch(client, *job), jobs)):
            for run_id, step, value in found:  # in logging order: a re-logged step keeps the last
                points[run_id][key][step] = value
    return {
        run_id: {key: dict(sorted(steps.items())) for key, steps in by_key.items()}
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
