"""What logging a run's checkpoints costs: the pt2 LoggedModels training logs now (`best` and
`final`, tracking.models.log_checkpoint) against the pickle model it logged before (one model,
with the package source in code_paths), both models, in one process, against one local sqlite
store. Writes docs/model-logging-benchmark.md.

    python bench/bench_model_logging.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

from cifar_mlflow.core.data import MEAN, STD
from cifar_mlflow.core.models import Normalized, build_model
from cifar_mlflow.tracking.models import log_checkpoint
from cifar_mlflow.tracking.training import PACKAGE_DIR

DOC = Path(__file__).resolve().parents[1] / "docs" / "model-logging-benchmark.md"
CLASSES = tuple(f"c{i}" for i in range(10))


def pickle_model(model: torch.nn.Module, example: np.ndarray) -> None:
    """The baseline: what training logged before (one pickle model with code_paths)."""
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                             signature=infer_signature(example, logits), input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                               f"mlflow=={mlflow.__version__}"],
                             code_paths=[str(PACKAGE_DIR)])  # fmt: skip


def pt2_checkpoints(model: torch.nn.Module, example: np.ndarray) -> None:
    """Now: `final` and `best`, as training logs them."""
    for epoch, name in ((2, "final"), (1, "best")):
        log_checkpoint(name, model, epoch, CLASSES, example)


def seconds(log, model: torch.nn.Module, example: np.ndarray) -> float:
    with mlflow.start_run():
        started = time.perf_counter()
        log(model, example)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    example = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        mlflow.set_experiment("model-logging")
        for name in ("resnet18", "ghost_resnet18"):
            model = Normalized(build_model(name, "relu", 10), MEAN, STD).eval()
            seconds(pt2_checkpoints, model, example)  # warm-up: MLflow's first-call costs
            times = {"pickle (before)": [], "pt2 best + final (now)": []}
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                times["pickle (before)"].append(seconds(pickle_model, model, example))
                times["pt2 best + final (now)"].append(seconds(pt2_checkpoints, model, example))
            for way, values in times.items():
                rows.append((name, way, statistics.median(values), min(values), max(values)))
                print(f"{name:15} {way:24} median {rows[-1][2]:.2f} s")
    lines = [
        "# Logging a run's models",
        "",
        "`python bench/bench_model_logging.py` (2 CPU cores, local sqlite store, after one "
        f"warm-up; median of {args.repeats} interleaved repeats). Before: one pickle model with "
        "the package in `code_paths`; now: two pt2 LoggedModels (`best` and `final`), each "
        "exported with torch.export and loaded back once by MLflow to check the input example.",
        "",
        "| model | what is logged | median s | min s | max s |",
        "|---|---|---|---|---|",
        *(f"| {m} | {w} | {med:.2f} | {lo:.2f} | {hi:.2f} |" for m, w, med, lo, hi in rows),
        "",
    ]
    DOC.write_text("\n".join(lines))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
