"""Benchmark `compare`: 100 runs of 40 epochs on a local tracking server, target under 10 s from
the command line; this tree against an earlier commit (default: main), in the same run.

    .venv/bin/python bench/bench_compare.py            # starts its own `mlflow server`
    .venv/bin/python bench/bench_compare.py --before 9d2664b --tracking-uri http://127.0.0.1:5000

Logs two studies of 100 runs each through the trainer's tracking functions (tracking.runs,
tracking.training; the epochs as cifar_mlflow.testing.runs logs them), each run with its
per-image predictions on 10,000 test images at `best` and `final` (the `predictions` tag):
  - "study": the study's grid (grids/study.yaml: 7 configurations, 3 comparison charts) with 14
    seeds, 16 for the shared baseline;
  - "factorial": 2 models x 4 activations x 3 optimizers x 4 seeds, plus 4 seeds at lr 0.1
    (25 configurations, 26 comparison charts): the most charts 100 runs can ask for here.
Then, on the same server:
  - fetching the histories compare needs: one get_metric_history call per run and metric (the
    baseline), and tracking.history.fetch_histories (the bulk endpoint) on 1 thread and on its
    FETCH_THREADS (wall clock, and this process's CPU time; the server's is not in it);
  - for each study, in a fresh process each, the earlier commit's package (`git archive` of
    --before into a temporary folder, first on PYTHONPATH) and this tree's, alternated, REPEATS
    rounds: `cifar-mlflow compare` as a user runs it, and the report alone (`write_report`:
    every figure drawn and every file written, timed after the runs are fetched);
  - this tree's `run_compare` step by step: search, fetch (histories and predictions), the
    predictions alone (200 files on job.PREDICTION_THREADS threads), then drawing while uploading
    (compare's way) against drawing first and uploading after, alternated;
  - `cifar-mlflow --help`.
It starts its server with cifar_mlflow.testing.server and imports nothing from tests/.
Writes docs/compare-benchmark.json and docs/compare-benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib
import mlflow
from mlflow.tracking import MlflowClient

from cifar_mlflow.compare import job, report
from cifar_mlflow.core.files import atomic_write
from cifar_mlflow.testing.runs import fabricated_outcomes, log_synthetic_run
from cifar_mlflow.testing.server import MlflowServer
from cifar_mlflow.tracking import connection, history, records
from cifar_mlflow.tracking.runs import JOB_TAG, RunSpec, tracked_run
from cifar_mlflow.tracking.training_runs import Selection, SelectionError, training_runs

EPOCHS = 40
TEST_IMAGES = 10_000
TARGET_SECONDS = 10.0
REPEATS = 3
UPLOAD_PHASES = ("draw, then upload", "draw while uploading (compare)")
PHASES = ("search", "fetch", "predictions", *UPLOAD_PHASES)
# Run in a fresh process with a tree's package first on the path: the report alone, timed after
# the runs are read. It reaches tracking through compare's job module (connection,
# training_runs, Selection, load_records), which holds those names at either commit.
REPORT_ALONE = """
import json, sys, tempfile, time
from pathlib import Path
import cifar_mlflow
from cifar_mlflow.compare import job, report
job.connection.connect()
loaded = job.load_records(job.training_runs(job.Selection(sys.argv[1])))
with tempfile.TemporaryDirectory() as folder:
    wall, cpu = time.perf_counter(), time.process_time()
    report.write_report(loaded, Path(folder), "bench")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = len(list(Path(folder).rglob("*.png")))
print(json.dumps({"wall": wall, "cpu": cpu, "figures": figures, "package": cifar_mlflow.__file__}))
"""


def study_grid() -> list[dict]:
    """grids/study.yaml: each factor varied around resnet18 / relu / sgd."""
    baseline = {"model": "resnet18", "activation": "relu", "optimizer": "sgd"}
    variants = [{"activation": a} for a in ("sigmoid", "leaky_relu", "gelu")]
    variants += [{"optimizer": o} for o in ("momentum", "adam")] + [{"model": "ghost_resnet18"}]
    return [{**baseline, "seed": s} for s in range(16)] + [
        {**baseline, **v, "seed": s} for v in variants for s in range(14)
    ]


def factorial_grid() -> list[dict]:
    grid = [
        {"model": m, "activation": a, "optimizer": o, "seed": s}
        for m in ("resnet18", "ghost_resnet18")
        for a in ("relu", "leaky_relu", "gelu", "sigmoid")
        for o in ("sgd", "momentum", "adam")
        for s in range(4)
    ]
    return grid + [{"lr": 0.1, "seed": s} for s in range(4)]


DESIGNS = {"study": study_grid, "factorial": factorial_grid}


def logged_runs(experiment: str) -> int:
    """How many finished training runs `experiment` holds (0 when it has none, or is not there)."""
    try:
        return len(training_runs(Selection(experiment)))
    except SelectionError:
        return 0


def log_design(experiment: str, grid: list[dict]) -> None:
    """Synthetic runs (cifar_mlflow.testing.runs), opened and summarised as trained ones are."""
    if logged_runs(experiment) == len(grid):
        return
    started = time.perf_counter()
    for number, options in enumerate(grid):
        quality = 0.1 if options.get("activation") == "gelu" else 0.0
        outcomes = {c: fabricated_outcomes(0.6 + quality, TEST_IMAGES, 2 * number + i)
                    for i, c in enumerate(("best", "final"))}  # fmt: skip
        log_synthetic_run(experiment, quality, epochs=EPOCHS, outcomes=outcomes, **options)
    print(f"{experiment}: logged {len(grid)} runs in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)  # fmt: skip


def timed(fn, repeats: int = 1) -> tuple[dict, object]:
    """Median wall and CPU seconds of `repeats` calls (and each call's), and the last result."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu),
            "wall_all": wall, "cpu_all": cpu}, result  # fmt: skip


def fetch_per_run(client: MlflowClient, run_ids: list[str]) -> int:
    """The baseline: one get_metric_history call per run and metric, with the public client."""
    return sum(
        len(client.get_metric_history(run_id, key))
        for key in job.HISTORY_KEYS
        for run_id in run_ids
    )


def fetch_bulk(run_ids: list[str], threads: int | None = None) -> int:
    """compare's fetch (the bulk endpoint, one call per metric for up to 100 runs) on `threads`
    threads (default: history.FETCH_THREADS, compare's); returns the points fetched."""
    saved = history.FETCH_THREADS
    if threads is not None:
        history.FETCH_THREADS = threads
    try:
        found = history.fetch_histories(run_ids, job.HISTORY_KEYS)
    finally:
        history.FETCH_THREADS = saved
    return sum(len(points) for by_key in found.values() for points in by_key.values())


def measure_fetch(experiment: str) -> dict:
    runs = training_runs(Selection(experiment))
    run_ids = [r.info.run_id for r in runs]
    fetch = {}
    fetch["per_run"], points = timed(lambda: fetch_per_run(MlflowClient(), run_ids))
    fetch["bulk_1_thread"], bulk = timed(lambda: fetch_bulk(run_ids, 1), REPEATS)
    fetch["bulk_threads"], _ = timed(lambda: fetch_bulk(run_ids), REPEATS)
    assert points == bulk == len(run_ids) * EPOCHS * len(job.HISTORY_KEYS), (points, bulk)
    return fetch


def package_of(commit: str, folder: Path) -> Path:
    """The cifar_mlflow package as it is at `commit`, unpacked into `folder` (git archive: the
    repository and its worktrees are left as they are)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "cifar_mlflow"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def in_fresh_process(tree: Path, uri: str, *args: str) -> tuple[float, str]:
    """Wall seconds of `python ARGS` in `tree` (`-c` and `-m` put the working directory first on
    the path; so does PYTHONPATH, for any child), start-up included; and what it printed."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=tree, check=True, capture_output=True, text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(tree)},
    )  # fmt: skip
    return time.perf_counter() - started, done.stdout


def before_and_after(trees: dict[str, Path], experiment: str, uri: str, workdir: Path) -> dict:
    """Each tree's `cifar-mlflow compare` and report alone, alternated round by round."""
    cli = {name: [] for name in trees}
    alone = {name: [] for name in trees}
    for round_ in range(REPEATS):
        for name, tree in trees.items():
            out = workdir / f"cli-{name}-{experiment}-{round_}"
            seconds, _ = in_fresh_process(tree, uri, "-m", "cifar_mlflow", "compare",
                                          "--experiment", experiment, "--output-dir", str(out))  # fmt: skip
            cli[name].append(seconds)
            _, printed = in_fresh_process(tree, uri, "-c", REPORT_ALONE, experiment)
            result = json.loads(printed.splitlines()[-1])
            assert result["package"].startswith(str(tree)), (result["package"], tree)
            alone[name].append(result)
    return {
        name: {
            "cli_wall": statistics.median(cli[name]), "cli_wall_all": cli[name],
            "report_wall": statistics.median(r["wall"] for r in alone[name]),
            "report_cpu": statistics.median(r["cpu"] for r in alone[name]),
            "report_all": alone[name], "figures": alone[name][0]["figures"],
        }
        for name in trees
    }  # fmt: skip


def phases(experiment: str, workdir: Path) -> dict[str, dict]:
    """run_compare's steps one by one, to see where its time goes; the last, drawing while the
    files upload, against drawing first and uploading after (log_artifacts), alternated."""
    timings = {}
    timings["search"], runs = timed(lambda: training_runs(Selection(experiment)))
    timings["fetch"], loaded = timed(lambda: job.load_records(runs))
    timings["predictions"], _ = timed(lambda: job.load_outcomes(runs))

    def draw_then_upload() -> None:
        folder = Path(tempfile.mkdtemp(dir=workdir))
        report.write_report(loaded, folder, "bench")
        mlflow.log_artifacts(str(folder))

    def draw_while_uploading() -> None:
        folder = Path(tempfile.mkdtemp(dir=workdir))
        with records.Uploads(run_id, folder) as upload:
            report.write_report(loaded, folder, "bench", upload)

    with tracked_run(RunSpec(experiment, "bench", {JOB_TAG: "compare"})) as run_id:
        for name, fn in [(UPLOAD_PHASES[0], draw_then_upload),
                         (UPLOAD_PHASES[1], draw_while_uploading)] * REPEATS:  # fmt: skip
            seconds, _ = timed(fn)
            timings.setdefault(name, []).append(seconds)
    for name in UPLOAD_PHASES:
        rounds = timings[name]
        timings[name] = {clock: statistics.median(r[clock] for r in rounds)
                         for clock in ("wall", "cpu")}  # fmt: skip
    return timings


def measure(uri: str, workdir: Path, before: str) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    connection.connect()
    experiments = {name: f"bench-compare-{name}-100x{EPOCHS}" for name in DESIGNS}
    for name, grid in DESIGNS.items():
        log_design(experiments[name], grid())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", before],
                            check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    trees = {"before": package_of(commit, Path(tempfile.mkdtemp(dir=workdir))), "after": ROOT}
    results: dict = {"load_average_1min_start": os.getloadavg()[0], "epochs": EPOCHS,
                     "before": f"{before} ({commit})", "after": f"this tree (HEAD {head})"}  # fmt: skip
    results["fetch"] = measure_fetch(experiments["factorial"])
    results["fetch_threads"] = history.FETCH_THREADS
    results["designs"] = {
        name: {"runs": logged_runs(experiment),
               **before_and_after(trees, experiment, uri, workdir),
               "phases": phases(experiment, workdir)}
        for name, experiment in experiments.items()
    }  # fmt: skip
    results["cli_help_wall"], _ = in_fresh_process(ROOT, uri, "-m", "cifar_mlflow", "--help")
    results["target_seconds"] = TARGET_SECONDS
    results["machine"] = {
        "cpus": os.cpu_count(), "load_average_1min_end": os.getloadavg()[0],
        "python": platform.python_version(), "mlflow": mlflow.__version__,
        "matplotlib": matplotlib.__version__,
    }  # fmt: skip
    return results


def write_docs(results: dict) -> None:
    docs = ROOT / "docs"
    with atomic_write(docs / "compare-benchmark.json") as f:
        f.write((json.dumps(results, indent=2) + "\n").encode())
    f, m = results["fetch"], results["machine"]
    threads = results["fetch_threads"]
    designs = (
        f"`bench/bench_compare.py`: 100 runs of {results['epochs']} epochs on a local "
        "`mlflow server` (sqlite backend, 1 worker, same machine); target: `cifar-mlflow "
        f"compare` of 100 runs in under {results['target_seconds']:.0f} s. Two designs of 100 "
        "runs: *study* (grids/study.yaml's 7 configurations, 14-16 seeds each, 3 comparisons) "
        "and *factorial* (2 models x 4 activations x 3 optimizers x 4 seeds + 4 runs at lr 0.1: "
        "25 configurations, 26 comparisons). Each comparison is two figures (curves, forest "
        "plot)."
    )
    machine = (
        f"Machine: {m['cpus']} CPUs shared with other developers (1-minute load average "
        f"{results['load_average_1min_start']:.1f} at the start, {m['load_average_1min_end']:.1f} "
        f"at the end); Python {m['python']}, MLflow {m['mlflow']}, matplotlib {m['matplotlib']}. "
        "Seconds."
    )
    versions = (
        f"Before: `{results['before']}`; after: {results['after']}. Each in a fresh process, "
        f"alternated, medians of {REPEATS} rounds; the report alone is `write_report` (every "
        "figure drawn, every file written) timed after the runs are fetched."
    )
    version_rows = [
        f"| {name} | {d['before']['figures']} / {d['after']['figures']} "
        f"| {d['before']['cli_wall']:.2f} | **{d['after']['cli_wall']:.2f}** "
        f"| {d['before']['report_wall']:.2f} / {d['before']['report_cpu']:.2f} "
        f"| {d['after']['report_wall']:.2f} / {d['after']['report_cpu']:.2f} |"
        for name, d in results["designs"].items()
    ]
    keys = len(job.HISTORY_KEYS)
    fetch_rows = [
        (f"get_metric_history per run and metric ({100 * keys} calls)", f["per_run"]),
        (f"bulk endpoint, {keys} calls on 1 thread", f["bulk_1_thread"]),
        (f"bulk endpoint, {keys} calls on {threads} threads (**compare**)", f["bulk_threads"]),
    ]
    header = ("| design | figures before / after | `cifar-mlflow compare` before | after "
              "| report alone before (wall / CPU) | after (wall / CPU) |")  # fmt: skip
    steps = (f"This tree's `run_compare` step by step (wall s / CPU s; the last two: medians of "
             f"{REPEATS} alternated rounds):")  # fmt: skip
    lines = [
        "# compare benchmark", "", designs, "", machine, "", versions, "",
        header, "|---|---|---|---|---|---|", *version_rows,
        f"| `cifar-mlflow --help` | | | {results['cli_help_wall']:.2f} | | |", "",
        f"Fetching the {keys} histories of the factorial's 100 runs:", "",
        "| fetch | wall s | CPU s |", "|---|---|---|",
        *(f"| {name} | {t['wall']:.2f} | {t['cpu']:.2f} |" for name, t in fetch_rows), "",
        steps, "",
        "| design | " + " | ".join(PHASES) + " |", "|---" * (len(PHASES) + 1) + "|",
        *(f"| {name} | " + " | ".join(f"{d['phases'][p]['wall']:.2f} / {d['phases'][p]['cpu']:.2f}"
                                      for p in PHASES) + " |"
          for name, d in results["designs"].items()), "", verdict(results), "",
    ]  # fmt: skip
    with atomic_write(docs / "compare-benchmark.md") as f:
        f.write("\n".join(lines).encode())


def verdict(results: dict) -> str:
    """The target, checked on each design's `cifar-mlflow compare` (wall clock, as a user
    waits), in this tree."""
    target = results["target_seconds"]
    checks = [
        f"{name} {d['after']['cli_wall']:.1f} s "
        f"({'met' if d['after']['cli_wall'] < target else '**not met**'})"
        for name, d in results["designs"].items()
    ]
    return (
        f"Target, `cifar-mlflow compare` of 100 runs in under {target:.0f} s (wall, start-up "
        f"included): {'; '.join(checks)}. On a machine others load, wall time is this process's "
        "CPU time plus waiting for a core and for the server."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="an existing server (default: start one)")
    parser.add_argument("--before", default="main", help="the commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.tracking_uri is None:
            server = MlflowServer(Path(tmp))
            server.wait_ready(timeout=300)
        try:
            results = measure(args.tracking_uri or server.uri, Path(tmp), args.before)
        finally:
            if server:
                server.stop()
    write_docs(results)
    print((ROOT / "docs" / "compare-benchmark.md").read_text())


if __name__ == "__main__":
    main()
