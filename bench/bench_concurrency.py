"""Benchmark many runs logging at once: N = 8, 32, 64 concurrent runs against one tracking server
on sqlite and one on PostgreSQL. Nothing may be lost or doubled.

    .venv/bin/python bench/bench_concurrency.py                  # both stores, N = 8 32 64
    .venv/bin/python bench/bench_concurrency.py --runs 8 --epochs 5 --stores sqlite

Each run is a real process using the project's own tracking code, the path `train` takes
(tracking.connection.connect, tracking.runs.tracked_run, tracking.outbox.Outbox), without torch:
a fake epoch loop that sleeps --epoch-seconds, then puts the epoch's nine metrics and a small
checkpoint file (CHECKPOINT_BYTES) to the outbox. All N runs start together in one experiment
that none of them has created. Both servers are `mlflow server` with one worker
(cifar_mlflow.testing.server), the PostgreSQL one on a local PostgreSQL with fsync on
(cifar_mlflow.testing.postgres), each with MLflow's default pool of database connections and
with a pool of 40 (POOLS): the baseline and the setting docs/scale.md advises. Per store and N it records: runs FINISHED; metric points lost
(an epoch's value missing from a run's history) and duplicated (a step logged twice), read back
from every run's history; the errors the server answered (4xx, 5xx: a busy server's, retried by
MLflow's client or the outbox, or a run is lost) and the outbox's retry streaks; p50 and p99 of
an epoch's log latency (from `put` to the last of its metrics on the server); the wall time.
Writes docs/scale.json and docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = (8, 32, 64)
STORES = ("sqlite", "postgresql")
# The server's database connections: MLflow's defaults (SQLAlchemy's pool of 5 + 10), and one
# for each of a server worker's request threads (testing.server.POOL_OF_40), README's setting.
POOLS = ("default pool", "pool of 40")
EPOCHS = 40
EPOCH_SECONDS = 0.25
CHECKPOINT_BYTES = 64 * 1024
KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "lr",
        "epoch_seconds", "images_per_second")  # fmt: skip
RUN_TIMEOUT_SECONDS = 1800
# uvicorn's access log: `"POST /api/2.0/mlflow/runs/log-batch HTTP/1.1" 503 Service Unavailable`
ANSWER = re.compile(r'"[A-Z]+ \S+ HTTP/[\d.]+" (\d{3})')


# ---- one run, in its own process ----


def run_one(experiment: str, index: int, epochs: int, epoch_seconds: float, out: Path) -> None:
    """A run that logs like `train` does, with made-up epochs; writes its timings to `out`."""
    from cifar_mlflow.tracking import connection
    from cifar_mlflow.tracking.outbox import Outbox
    from cifar_mlflow.tracking.runs import RunSpec, tracked_run

    retries = RetryCount()
    logging.getLogger("cifar_mlflow.tracking.outbox").addHandler(retries)
    connection.connect()
    queued: dict[int, float] = {}
    logged: dict[int, float] = {}
    spec = RunSpec(experiment=experiment, name=f"run-{index}", tags={"bench": "concurrency"},
                   params={"index": index, "epochs": epochs})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, tracked_run(spec) as run_id:
        with Outbox(run_id) as outbox:
            send = outbox.client.log_batch

            def timed_send(run_id, metrics=(), **rest):  # when an epoch's metrics are on the server
                send(run_id, metrics=metrics, **rest)
                for step in {m.step for m in metrics}:
                    logged[step] = time.monotonic()

            outbox.client.log_batch = timed_send
            for epoch in range(1, epochs + 1):
                time.sleep(epoch_seconds)
                checkpoint = Path(tmp) / f"epoch-{epoch}.pt"
                checkpoint.write_bytes(os.urandom(CHECKPOINT_BYTES))
                queued[epoch] = time.monotonic()
                outbox.put(epoch, {k: index + epoch / 1000 for k in KEYS})
                outbox.put_checkpoint(epoch, checkpoint)
    latencies = [logged[e] - queued[e] for e in queued if e in logged]
    out.write_text(json.dumps({"run_id": run_id, "latencies": latencies,
                               "retry_streaks": retries.count}))  # fmt: skip


class RetryCount(logging.Handler):
    """Counts the outbox's "unreachable" warnings: one per streak of failed sends."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "unreachable" in record.getMessage()


# ---- N runs at once against one server ----


def measure(uri: str, server_log: Path, runs: int, epochs: int, epoch_seconds: float) -> dict:
    from mlflow.tracking import MlflowClient

    experiment = f"concurrency-{runs}-{uuid.uuid4().hex[:6]}"
    answers_before = server_answers(server_log)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", experiment, str(i), str(epochs),
                 str(epoch_seconds), str(Path(tmp) / f"{i}.json")],
                env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                stderr=open(Path(tmp) / f"{i}.err", "w"),
            )  # fmt: skip
            for i in range(runs)
        ]
        codes = [p.wait(RUN_TIMEOUT_SECONDS) for p in processes]
        wall = time.monotonic() - start
        reports = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))]
        failures = [
            (Path(tmp) / f"{i}.err").read_text()[-2000:] for i, c in enumerate(codes) if c != 0
        ]
    answers = server_answers(server_log) - answers_before
    client = MlflowClient(uri)
    found = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], max_results=1000
    )
    lost = doubled = 0
    for run in found:
        for key in KEYS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            lost += len(set(range(1, epochs + 1)) - set(steps))
            doubled += len(steps) - len(set(steps))
    lost += (runs - len(found)) * epochs * len(KEYS)  # a run that never opened lost everything
    latencies = sorted(x for r in reports for x in r["latencies"])
    return {
        "runs": runs,
        "finished": sum(r.info.status == "FINISHED" for r in found),
        "processes_failed": len(failures),
        "metrics_expected": runs * epochs * len(KEYS),
        "metrics_lost": lost,
        "metrics_doubled": doubled,
        "server_errors": answers.errors,
        "server_requests": answers.total,
        "retry_streaks": sum(r["retry_streaks"] for r in reports),
        "p50_seconds": percentile(latencies, 50),
        "p99_seconds": percentile(latencies, 99),
        "wall_seconds": round(wall, 1),
        "first_failure": failures[0].strip().splitlines()[-1] if failures else "",
    }


class Answers:
    def __init__(self, total: int, errors: int):
        self.total, self.errors = total, errors

    def __sub__(self, other: Answers) -> Answers:
        return Answers(self.total - other.total, self.errors - other.errors)


def server_answers(log: Path) -> Answers:
    """The server's answers so far, from its access log: all, and the errors (4xx, 5xx; every
    one here is a busy server's, since the runs send nothing it could refuse for good)."""
    codes = [int(m[1]) for m in ANSWER.finditer(log.read_text(errors="replace"))]
    return Answers(len(codes), sum(c >= 400 for c in codes))


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


# ---- the servers, the report ----


def start_server(store: str, pool: str, root: Path):
    """`mlflow server` on sqlite, or on a PostgreSQL started here (with fsync, like sqlite's),
    with the `pool` of database connections."""
    from cifar_mlflow.testing.postgres import PostgresServer
    from cifar_mlflow.testing.server import POOL_OF_40, MlflowServer

    database = PostgresServer(durable=True) if store == "postgresql" else None
    env = {**(database.env if database else os.environ)}
    if pool == "pool of 40":
        env.update(POOL_OF_40)
    server = MlflowServer(root, store=database.uri if database else None, env=env)
    server.wait_ready()
    return server, database


def write_report(results: dict, setup: dict) -> None:
    (ROOT / "docs" / "scale.json").write_text(
        json.dumps({"setup": setup, "results": results}, indent=2) + "\n"
    )
    header = ("| store | server | runs at once | FINISHED | metric points lost | doubled | server errors "
              "(retried) / requests | outbox retry streaks | epoch log p50 | p99 | wall |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for setting, rows in results.items():
        for r in rows:
            lines.append(
                f"| {setting.replace(', ', ' | ')} | {r['runs']} | {r['finished']}/{r['runs']} | {r['metrics_lost']} of "
                f"{r['metrics_expected']} | {r['metrics_doubled']} | {r['server_errors']} / "
                f"{r['server_requests']} | {r['retry_streaks']} | {seconds(r['p50_seconds'])} | "
                f"{seconds(r['p99_seconds'])} | {r['wall_seconds']:.0f} s |"
            )
    template = (ROOT / "docs" / "scale.md").read_text()
    begin, end = "<!-- table: bench/bench_concurrency.py -->", "<!-- end of table -->"
    before, _, rest = template.partition(begin)
    _, _, after = rest.partition(end)
    setup_line = (f"Measured {setup['date']} on {setup['machine']}: {setup['epochs']} epochs of "
                  f"{setup['epoch_seconds']} s per run, {setup['checkpoint_bytes'] // 1024} KiB "
                  f"checkpoint per epoch, one `mlflow server` worker, {setup['machine_note']}.")  # fmt: skip
    (ROOT / "docs" / "scale.md").write_text(
        f"{before}{begin}\n{setup_line}\n\n" + "\n".join(lines) + f"\n{end}{after}"
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        experiment, index, epochs, epoch_seconds, out = sys.argv[2:]
        run_one(experiment, int(index), int(epochs), float(epoch_seconds), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=list(RUNS))
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--pools", nargs="+", choices=POOLS, default=list(POOLS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--epoch-seconds", type=float, default=EPOCH_SECONDS)
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/")
    args = parser.parse_args()
    results = {}
    for store in args.stores:
        for pool in args.pools:
            setting = f"{store}, {pool}"
            with tempfile.TemporaryDirectory() as tmp:
                server, database = start_server(store, pool, Path(tmp))
                try:
                    results[setting] = []
                    for runs in args.runs:
                        row = measure(server.uri, Path(tmp) / "server.log", runs, args.epochs,
                                      args.epoch_seconds)  # fmt: skip
                        print(setting, json.dumps(row), flush=True)
                        results[setting].append(row)
                finally:
                    server.stop()
                    if database:
                        database.stop()
    setup = {"date": time.strftime("%Y-%m-%d"), "epochs": args.epochs,
             "epoch_seconds": args.epoch_seconds, "checkpoint_bytes": CHECKPOINT_BYTES,
             "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}",
             "machine_note": "runs, server and database all on it"}  # fmt: skip
    if not args.no_write:
        write_report(results, setup)


if __name__ == "__main__":
    main()
