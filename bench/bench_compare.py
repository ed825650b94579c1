"""Benchmark `compare`: 100 runs of 40 epochs on a local tracking server, target under 10 s.

    .venv/bin/python bench/bench_compare.py            # starts its own `mlflow server`
    .venv/bin/python bench/bench_compare.py --tracking-uri http://127.0.0.1:5000

Logs two studies of 100 runs each through the trainer's tracking functions (tracking.runs,
tracking.training; the epochs as cifar_mlflow.testing.runs logs them):
  - "study": the study's grid (grids/study.yaml: 7 configurations, 3 comparison charts) with 14
    seeds, 16 for the shared baseline;
  - "factorial": 2 models x 4 activations x 3 optimizers x 4 seeds, plus 4 seeds at lr 0.1
    (25 configurations, 26 comparison charts): the most charts 100 runs can ask for here.
Then times, on the same server in the same process (wall clock, and this process's CPU time,
which a shared machine disturbs less; the server's CPU is not in it):
  - fetching the 5 histories compare needs: one get_metric_history call per run and metric (the
    baseline), and tracking.history.fetch_histories (the bulk endpoint) on 1 thread and on its
    FETCH_THREADS;
  - drawing the 100 run figures: a fresh pyplot figure each (the naive baseline), one matplotlib
    figure reused for every run (the careful one), and compare's stencil;
  - drawing the comparison charts of each study;
  - the whole `run_compare` (search, fetch, draw, write, log the artifacts, move the report into
    place) on each study, repeated; and, in a fresh process each, `cifar-mlflow compare` and
    `cifar-mlflow --help`.
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

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from cifar_mlflow.compare import charts, job, report, study
from cifar_mlflow.core.files import atomic_write
from cifar_mlflow.testing.runs import log_synthetic_run
from cifar_mlflow.testing.server import MlflowServer
from cifar_mlflow.tracking import connection, history, records
from cifar_mlflow.tracking.history import Selection, SelectionError
from cifar_mlflow.tracking.runs import JOB_TAG, RunSpec, tracked_run

EPOCHS = 40
TARGET_SECONDS = 10.0
REPEATS = 3
UPLOAD_PHASES = ("draw, then upload", "draw while uploading (compare)")
PHASES = ("search", "fetch", *UPLOAD_PHASES)


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
        return len(history.training_runs(Selection(experiment)))
    except SelectionError:
        return 0


def log_design(experiment: str, grid: list[dict]) -> None:
    """Synthetic runs (cifar_mlflow.testing.runs), opened and summarised as trained ones are."""
    if logged_runs(experiment) == len(grid):
        return
    started = time.perf_counter()
    for options in grid:
        quality = 0.1 if options.get("activation") == "gelu" else 0.0
        log_synthetic_run(experiment, quality, epochs=EPOCHS, **options)
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


def draw_runs_fresh(records, folder: Path) -> None:
    """The baseline: a new pyplot figure per run, as one would write it first."""
    for run in records:
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=charts.DPI)
        for split in ("train", "test"):
            loss, acc = run.curve(f"{split}_loss"), run.curve(f"{split}_acc")
            loss_ax.plot(loss.epochs, loss.values, label=split)
            acc_ax.plot(acc.epochs, acc.values * 100, label=split)
        loss_ax.set(xlabel="epoch", ylabel="loss (cross-entropy)")
        acc_ax.set(xlabel="epoch", ylabel="accuracy (%)")
        loss_ax.legend()
        fig.suptitle(run.name)
        fig.savefig(folder / f"{run.run_id}.png")
        plt.close(fig)


def draw_runs_reused(records, folder: Path) -> None:
    """matplotlib done with care: one figure for all runs, each run's data swapped in and its
    axes fitted to it, titles as matplotlib text, the whole figure drawn and saved per run."""
    fig = Figure(figsize=(10, 4.2), dpi=charts.DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.76, wspace=0.22)
    axes = dict(zip(("loss", "acc"), fig.subplots(1, 2)))
    lines = {}
    for kind, ax in axes.items():
        ax.set(xlabel="epoch", ylabel="loss (cross-entropy)" if kind == "loss" else "accuracy (%)")
        ax.grid(alpha=0.3)
        for split in ("train", "test"):
            (lines[f"{split}_{kind}"],) = ax.plot([], [], label=split)
    fig.legend(handles=[lines["train_loss"], lines["test_loss"]], ncols=2, loc="upper right")
    title = fig.text(0.07, 0.97, "", weight="bold", va="top", size=11)
    subtitle = fig.text(0.07, 0.9, "", va="top")
    for run in records:
        for key, line in lines.items():
            curve = run.curve(key)
            line.set_data(curve.epochs, curve.values * (100 if key.endswith("acc") else 1))
        for ax in axes.values():
            ax.relim()
            ax.autoscale_view()
        title.set_text(f"{run.name}  (run {run.run_id[:12]})")
        subtitle.set_text("subtitle")
        fig.savefig(folder / f"{run.run_id}.png")


def draw_runs_stencil(records, folder: Path) -> None:
    figures = charts.RunFigures()
    for run in records:
        figures.save(run, "subtitle", folder / f"{run.run_id}.png")


def draw_comparisons(records, folder: Path) -> int:
    configurations = study.group_configurations(records)
    colours = charts.factor_colours(configurations)
    count = 0
    for factor in study.FACTORS:
        figures = charts.ComparisonFigures(factor, colours[factor])
        for comparison in study.find_comparisons(configurations, factor):
            count += 1
            figures.save(comparison, "title", folder / f"{count}.png")
    return count


def phases(experiment: str, workdir: Path) -> dict[str, dict]:
    """run_compare's steps one by one, to see where its time goes; the last, drawing while the
    files upload, against drawing first and uploading after (log_artifacts), alternated."""
    timings = {}
    timings["search"], runs = timed(lambda: history.training_runs(Selection(experiment)))
    timings["fetch"], loaded = timed(lambda: job.load_records(runs))

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


def cli_seconds(uri: str, *args: str) -> float:
    """Wall seconds of `cifar-mlflow ARGS` in a fresh interpreter, start-up included."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", *args],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri}, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def measure(uri: str, workdir: Path) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    connection.connect()
    client = MlflowClient()
    experiments = {name: f"bench-compare-{name}-100x{EPOCHS}" for name in DESIGNS}
    for name, grid in DESIGNS.items():
        log_design(experiments[name], grid())
    results: dict = {"load_average_1min_start": os.getloadavg()[0], "epochs": EPOCHS}

    runs = history.training_runs(Selection(experiments["factorial"]))
    run_ids = [r.info.run_id for r in runs]
    fetch = {}
    fetch["per_run"], points = timed(lambda: fetch_per_run(client, run_ids))
    fetch["bulk_1_thread"], bulk = timed(lambda: fetch_bulk(run_ids, 1), REPEATS)
    fetch["bulk_threads"], _ = timed(lambda: fetch_bulk(run_ids), REPEATS)
    assert points == bulk == len(run_ids) * EPOCHS * len(job.HISTORY_KEYS), (points, bulk)
    results["fetch"] = fetch
    results["fetch_threads"] = history.FETCH_THREADS

    loaded = job.load_records(runs)
    draw = {}
    for name, fn in (("runs_fresh_pyplot", draw_runs_fresh), ("runs_reused_figure", draw_runs_reused),
                     ("runs_stencil", draw_runs_stencil)):  # fmt: skip
        folder = Path(tempfile.mkdtemp(dir=workdir))
        draw[name], _ = timed(lambda: fn(loaded, folder))  # noqa: B023
    results["draw"] = draw

    designs = {}
    for name, experiment in experiments.items():
        loaded = job.load_records(history.training_runs(Selection(experiment)))
        folder = Path(tempfile.mkdtemp(dir=workdir))
        charts_time, count = timed(lambda: draw_comparisons(loaded, folder))  # noqa: B023
        whole, _ = timed(
            lambda: job.run_compare(Selection(experiment), workdir / f"report-{name}"),  # noqa: B023
            REPEATS,
        )
        designs[name] = {"runs": len(loaded), "comparison_charts": count,
                         "draw_comparisons": charts_time, "run_compare": whole,
                         "phases": phases(experiment, workdir)}  # fmt: skip
    results["designs"] = designs
    cli_args = ("--experiment", experiments["factorial"], "--output-dir", str(workdir / "cli"))
    results["cli_factorial_wall"] = cli_seconds(uri, "compare", *cli_args)
    results["cli_help_wall"] = cli_seconds(uri, "--help")
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
    f, d, m = results["fetch"], results["draw"], results["machine"]
    threads = results["fetch_threads"]
    rows = [
        ("fetch 5 histories of 100 runs: get_metric_history per run and metric (500 calls)",
         f["per_run"]),
        ("fetch: bulk endpoint, 5 calls on 1 thread", f["bulk_1_thread"]),
        (f"fetch: bulk endpoint, 5 calls on {threads} threads (**compare**)", f["bulk_threads"]),
        ("100 run figures: a fresh pyplot figure each", d["runs_fresh_pyplot"]),
        ("100 run figures: one matplotlib figure reused, axes fitted per run",
         d["runs_reused_figure"]),
        ("100 run figures: stencil (**compare**)", d["runs_stencil"]),
    ]  # fmt: skip
    for name, design in results["designs"].items():
        n = design["comparison_charts"]
        rows.append((f"{name}: {n} comparison charts", design["draw_comparisons"]))
        rows.append(
            (f"{name}: **whole `run_compare`** (median of {REPEATS})", design["run_compare"])
        )
    designs = (
        f"`bench/bench_compare.py`: 100 runs of {results['epochs']} epochs on a local "
        "`mlflow server` (sqlite backend, 1 worker, same machine); target: compared and charted "
        f"in under {results['target_seconds']:.0f} s. Two designs of 100 runs: *study* "
        "(grids/study.yaml's 7 configurations, 14-16 seeds each, 3 comparison charts) and "
        "*factorial* (2 models x 4 activations x 3 optimizers x 4 seeds + 4 runs at lr 0.1: 25 "
        "configurations, 26 comparison charts)."
    )
    machine = (
        f"Machine: {m['cpus']} CPUs shared with other developers (1-minute load average "
        f"{results['load_average_1min_start']:.1f} at the start, {m['load_average_1min_end']:.1f} "
        f"at the end); Python {m['python']}, MLflow {m['mlflow']}, matplotlib {m['matplotlib']}. "
        "Seconds; CPU is this process's time (the server's is not in it)."
    )
    cli = [
        f"| {name} in a fresh process | {results[key]:.2f} | |"
        for name, key in (("factorial: `cifar-mlflow compare`", "cli_factorial_wall"),
                          ("`cifar-mlflow --help`", "cli_help_wall"))
    ]  # fmt: skip
    steps_heading = (
        f"`run_compare`'s steps (wall s / CPU s; the last two: medians of {REPEATS} alternated "
        "rounds):"
    )
    lines = [
        "# compare benchmark", "", designs, "", machine, "",
        "| step | wall s | CPU s |", "|---|---|---|",
        *(f"| {name} | {t['wall']:.2f} | {t['cpu']:.2f} |" for name, t in rows), *cli, "",
        steps_heading, "",
        "| design | " + " | ".join(PHASES) + " |", "|---" * (len(PHASES) + 1) + "|",
        *(f"| {name} | " + " | ".join(f"{d['phases'][p]['wall']:.2f} / {d['phases'][p]['cpu']:.2f}"
                                      for p in PHASES) + " |"
          for name, d in results["designs"].items()), "", verdict(results), "",
    ]  # fmt: skip
    with atomic_write(docs / "compare-benchmark.md") as f:
        f.write("\n".join(lines).encode())


def verdict(results: dict) -> str:
    """The target, checked on each design's whole run_compare (wall clock, as a user waits)."""
    target = results["target_seconds"]
    checks = [
        f"{name} {d['run_compare']['wall']:.1f} s "
        f"({'met' if d['run_compare']['wall'] < target else '**not met**'})"
        for name, d in results["designs"].items()
    ]
    return (
        f"Target, 100 runs compared and charted in under {target:.0f} s (whole `run_compare`, "
        f"wall): {'; '.join(checks)}. The CPU column is what this process needed; on a machine "
        "others load, wall time is that plus waiting for a core and for the server."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="an existing server (default: start one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.tracking_uri is None:
            server = MlflowServer(Path(tmp))
            server.wait_ready(timeout=300)
        try:
            results = measure(args.tracking_uri or server.uri, Path(tmp))
        finally:
            if server:
                server.stop()
    write_docs(results)
    print((ROOT / "docs" / "compare-benchmark.md").read_text())


if __name__ == "__main__":
    main()
