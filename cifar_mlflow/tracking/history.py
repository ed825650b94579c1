"""Metric histories of many runs at once, as compare reads them.

Histories are fetched with the tracking server's bulk endpoint (the one MLflow's own UI charts
with; the Python client has no bulk call): one HTTP call per metric for up to 100 runs instead of
one per run and metric (measured in docs/compare-benchmark.md). Other stores (sqlite, files) are
read per run and metric.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

from .connection import is_http

# MLflow's bulk history endpoint (server/handlers.py, 3.17): at most 100 runs and 25,000 points
# per reply; a reply of exactly 25,000 may have been cut short, so that chunk is split.
BULK_HISTORY_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_MAX_RUNS = 100
BULK_MAX_POINTS = 25_000
FETCH_THREADS = 4  # the calls are I/O-bound; measured: 4 threads vs 1 in docs/compare-benchmark.md

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
