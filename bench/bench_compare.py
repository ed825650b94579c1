"""Benchmark `compare`: 100 runs of 40 epochs on a local tracking server, target under 10 s.

    .venv/bin/python bench/bench_compare.py            # starts its own `mlflow server`
    .venv/bin/python bench/bench_compare.py --tracking-uri http://127.0.0.1:5000

Logs the study once (2 models x 4 activations x 3 optimizers x 4 seeds, plus 4 seeds at lr 0.1:
100 runs in 25 configurations, 26 comparison charts) through the trainer's tracking functions,
then times, on the same server in the same process:
  - fetching the 5 metric histories compare needs: one get_metric_history call per run and metric
    (the baseline), the bulk endpoint one call per metric, and the bulk endpoint on 4 threads;
  - drawing the 100 per-run figures: a fresh pyplot figure per run (the baseline) and the shared
    template compare uses;
  - the whole `run_compare` (search, fetch, draw, log the artifacts to the compare run, move the
    report into place), repeated; and the `cifar-mlflow compare` command in a fresh process.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from cifar_mlflow import charts, compare, study, tracking  # noqa: E402
from cifar_mlflow.config import TrainConfig  # noqa: E402
from tests.conftest import MlflowServer  # noqa: E402
from tests.test_compare import MODEL_PARAMS, fabricated_history  # noqa: E402

EXPERIMENT = "bench-compare-100x40"
EPOCHS = 40
TARGET_SECONDS = 10.0
REPEATS = 3


def study_configs() -> list[TrainConfig]:
    base = dict(experiment=EXPERIMENT, epochs=EPOCHS, system_metrics=False)
    configs = [
        TrainConfig(model=m, activation=a, optimizer=o, seed=s, **base)
        for m in ("resnet18", "ghost_resnet18")
        for a in ("relu", "leaky_relu", "gelu", "sigmoid")
        for o in ("sgd", "momentum", "adam")
        for s in range(4)
    ]
    return configs + [TrainConfig(lr=0.1, seed=s, **base) for s in range(4)]


def log_study(client: MlflowClient) -> None:
    """Like a trained run: training_run, log_setup and log_summary, but the 40 epochs go in one
    log_batch call instead of 40 log_epoch calls, which only makes the setup quicker."""
    done = client.get_experiment_by_name(EXPERIMENT)
    if done and len(mlflow.search_runs([done.experiment_id], output_format="list")) >= 100:
        return
    started = time.perf_counter()
    for config in study_configs():
        history = fabricated_history(config, quality=0.1 if config.activation == "gelu" else 0.0)
        facts = {"device": "cpu", "model_params": MODEL_PARAMS[config.model], "model_flops": 1}
        with tracking.training_run(config) as run:
            tracking.log_setup(config, facts)
            now = int(time.time() * 1000)
            metrics = [
                Metric(key, value, now + m.epoch, m.epoch)
                for m in history
                for key, value in m.as_metrics().items()
            ]
            client.log_batch(run.info.run_id, metrics=metrics)
            tracking.log_summary(history)
    print(f"logged 100 runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Median wall seconds of `repeats` calls, and the last result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def fetch_per_run(client: MlflowClient, run_ids: list[str]) -> int:
    points = 0
    for key in compare.HISTORY_KEYS:
        for run_id in run_ids:
            points += len(client.get_metric_history(run_id, key))
    return points


def fetch_bulk(client: MlflowClient, run_ids: list[str], threads: int) -> int:
    with ThreadPoolExecutor(threads) as pool:
        found = pool.map(lambda key: compare._bulk_history(client, key, run_ids),
                         compare.HISTORY_KEYS)  # fmt: skip
        return sum(len(f) for f in found)


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


def draw_runs_template(records, folder: Path) -> None:
    figures = charts.RunFigures(records)
    for run in records:
        figures.save(run, "subtitle", folder / f"{run.run_id}.png")


def draw_comparisons(records, folder: Path) -> int:
    configurations = study.group_configurations(records)
    colours = charts.factor_colours(configurations)
    count = 0
    for factor in study.FACTORS:
        for comparison in study.find_comparisons(configurations, factor):
            count += 1
            charts.draw_comparison(comparison, colours[factor], "title", folder / f"{count}.png")
    return count


def cli_seconds(uri: str, output_dir: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", "compare", "--experiment", EXPERIMENT,
         "--output-dir", str(output_dir)],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri}, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def measure(uri: str, workdir: Path) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    tracking.connect()
    client = MlflowClient()
    log_study(client)
    runs = compare.select_runs(client, EXPERIMENT, "", None, False)
    run_ids = [r.info.run_id for r in runs]
    assert len(run_ids) == 100, len(run_ids)
    results: dict[str, object] = {"runs": len(run_ids), "epochs": EPOCHS}

    fetch = {}
    fetch["per_run_sequential"], points = timed(lambda: fetch_per_run(client, run_ids))
    fetch["bulk_sequential"], bulk_points = timed(lambda: fetch_bulk(client, run_ids, 1), REPEATS)
    fetch["bulk_4_threads"], _ = timed(lambda: fetch_bulk(client, run_ids, 4), REPEATS)
    assert points == bulk_points == 100 * EPOCHS * len(compare.HISTORY_KEYS), (points, bulk_points)
    fetch["http_calls"] = {"per_run": 100 * len(compare.HISTORY_KEYS),
                           "bulk": len(compare.HISTORY_KEYS)}  # fmt: skip
    results["fetch_seconds"] = fetch

    records = compare.load_records(runs, client)
    draw = {}
    for name, fn in (("per_run_fresh_pyplot", draw_runs_fresh),
                     ("per_run_template", draw_runs_template)):  # fmt: skip
        folder = Path(tempfile.mkdtemp(dir=workdir))
        draw[name], _ = timed(lambda: fn(records, folder))  # noqa: B023
    folder = Path(tempfile.mkdtemp(dir=workdir))
    draw["comparisons"], draw["comparison_charts"] = timed(lambda: draw_comparisons(records, folder))
    results["draw_seconds"] = draw

    phases = []
    for i in range(REPEATS):
        started = time.perf_counter()
        compare.run_compare(EXPERIMENT, output_dir=workdir / f"report-{i}")
        phases.append(time.perf_counter() - started)
    results["run_compare_seconds"] = {"median": statistics.median(phases), "all": phases}
    results["cli_seconds"] = cli_seconds(uri, workdir / "report-cli")
    results["target_seconds"] = TARGET_SECONDS
    results["machine"] = {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                          "python": platform.python_version(),
                          "mlflow": mlflow.__version__,
                          "matplotlib": matplotlib.__version__}  # fmt: skip
    return results


def write_docs(results: dict) -> None:
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "compare-benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    f, d, e = results["fetch_seconds"], results["draw_seconds"], results["run_compare_seconds"]
    m = results["machine"]
    rows = [
        ("fetch 5 histories: get_metric_history per run and metric (500 calls)", f["per_run_sequential"]),
        ("fetch 5 histories: bulk endpoint, 1 thread (5 calls)", f["bulk_sequential"]),
        ("fetch 5 histories: bulk endpoint, 4 threads (5 calls) **used**", f["bulk_4_threads"]),
        ("100 run figures: fresh pyplot figure each", d["per_run_fresh_pyplot"]),
        ("100 run figures: shared template **used**", d["per_run_template"]),
        (f"{d['comparison_charts']} comparison charts", d["comparisons"]),
        (f"whole `run_compare` (median of {len(e['all'])})", e["median"]),
        ("`cifar-mlflow compare` in a fresh process (imports torch)", results["cli_seconds"]),
    ]  # fmt: skip
    lines = [
        "# compare benchmark", "",
        f"`bench/bench_compare.py`: {results['runs']} runs of {results['epochs']} epochs on a "
        "local `mlflow server` (sqlite), target: compared and charted in under "
        f"{results['target_seconds']:.0f} s.", "",
        f"Machine: {m['cpus']} CPUs, shared (1-minute load average at the end: "
        f"{m['load_average_1min']:.1f}); Python {m['python']}, MLflow {m['mlflow']}, "
        f"matplotlib {m['matplotlib']}. Wall seconds, medians where repeated.", "",
        "| step | seconds |", "|---|---|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in rows), "",
    ]  # fmt: skip
    (docs / "compare-benchmark.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="an existing server (default: start one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.tracking_uri is None:
            server = MlflowServer(Path(tmp))
            server.wait_ready()
        try:
            results = measure(args.tracking_uri or server.uri, Path(tmp))
        finally:
            if server:
                server.stop()
    write_docs(results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
