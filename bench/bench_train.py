"""Benchmark training: the engine against PyTorch's usual recipe, same process, same model.

    .venv/bin/python bench/bench_train.py                  # throughput, CPU: a few minutes
    python bench/bench_train.py --device cuda --workers 4  # on a GPU; torch + torchvision only
    .venv/bin/python bench/bench_train.py --accuracy       # engine vs plain path, short real run
    python bench/bench_train.py --device cuda --recipe     # the study's recipe, end to end
    bash bench/gpu.sh                                       # all of these on the GPU machine

Throughput (the default) measures training images per second, for each model, of
  engine        the project's Trainer: the split on the device as uint8, batched crop/flip/
                normalise, channels_last, bf16 autocast on CUDA, no host sync per step;
  baseline_wW   a torchvision-style Dataset (PIL image per item, RandomCrop(32, padding=4),
                RandomHorizontalFlip, ToTensor, Normalize), DataLoader(shuffle=True,
                num_workers=W), fp32, loss.item() every step;
  pure          the model step alone (forward, loss, backward, optimizer) on pre-made batches on
                the device: the limit for that model on that device.
Each variant trains blocks of --steps batches in steady state (iterators live across blocks; an
epoch boundary inside a block costs what it costs), interleaved over --rounds rounds.
`--accuracy` trains the engine and the plain path (the baseline's pipeline and loop) from the
same initial weights and reports both test accuracies. `--recipe` times the study's recipe
(batch 128, 40 epochs, test evaluation each epoch) for ResNet-18 end to end, and Ghost-ResNet-18's
seconds per epoch; `--time-limit S` stops each model after the epoch that passes S seconds, and
the rest is extrapolated (marked so). Each mode writes bench/results/<mode>-<device>.json, then docs/benchmarks.md
is regenerated from every results file. Nothing here imports MLflow.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from bench import baseline, report
from bench.throughput import throughput
from bench.timing import environment, peak_memory_bytes, reset_peak_memory
from bench.workload import config_for, load
from cifar_mlflow.core.config import DEFAULTS
from cifar_mlflow.core.engine import (
    StopTraining,
    Trainer,
    build_optimizer,
    forward_flops,
    resolve_device,
)
from cifar_mlflow.core.errors import UserError
from cifar_mlflow.core.models import MODELS

DATA_DIR = "/work/shared/data/cifar10-jpeg"
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
ACCURACY_TRAIN, ACCURACY_TEST = 2000, 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--accuracy", action="store_true", help="engine vs plain path accuracy")
    mode.add_argument("--recipe", action="store_true", help="the study's recipe, end to end")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument(
        "--workers",
        help="baseline DataLoader workers, comma-separated "
        "(default: 4 on CUDA; 0,2 on a 2-core CPU)",
    )
    p.add_argument("--steps", type=int, help="batches per timed block (default: 1 CPU, 50 CUDA)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default: 4 CPU, 6 CUDA)")
    p.add_argument("--warmup", type=int, default=1, help="untimed blocks per variant first")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--compile", action="store_true", help="the engine trains through torch.compile")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--epochs", type=int, help="--accuracy: 2; --recipe: 40 for ResNet-18")
    p.add_argument("--ghost-epochs", type=int, default=5, help="--recipe: Ghost-ResNet-18 epochs")
    p.add_argument("--time-limit", type=float, help="--recipe: seconds per model, then extrapolate")
    p.add_argument("--seeds", default="0", help="--accuracy: comma-separated seeds")
    p.add_argument("--train-limit", type=int, default=0, help="training images (0: all)")
    p.add_argument("--test-limit", type=int, default=0, help="test images (0: all)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON")
    p.add_argument("--doc", type=Path, default=DOC, help="markdown file to regenerate")
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = device.type == "cuda"
    cores = os.cpu_count() or 1
    default_workers = "4" if on_gpu else f"0,{min(4, cores)}"
    args.workers = [int(w) for w in (args.workers or default_workers).split(",")]
    args.steps = args.steps or (50 if on_gpu else 1)
    args.rounds = args.rounds or (6 if on_gpu else 4)  # a whole Williams cycle of 3 / 4 variants
    if args.recipe:
        mode, result = "recipe", recipe(args, device)
    elif args.accuracy:
        mode, result = "accuracy", accuracy_check(args, device)
    else:
        mode, result = "throughput", throughput(args, device)
    path = args.results / f"{report.results_name(mode, device.type, args.compile)}.json"
    report.write_json(path, result)
    report.write_doc(args.doc, args.results)
    print(report.render(result))
    print(f"wrote {path} and {args.doc}")


# --- accuracy ------------------------------------------------------------------------------


def accuracy_check(args: argparse.Namespace, device: torch.device) -> dict:
    """Engine and plain path from the same initial weights, same seed, same images."""
    data = load(args, ACCURACY_TRAIN, ACCURACY_TEST)
    epochs = args.epochs or 2
    workers = max(args.workers)
    runs = []
    for seed in args.seeds:
        config = config_for(
            args, args.models[0], device, optimizer="momentum", epochs=epochs, seed=seed
        )
        trainer = Trainer(config, data, device)
        plain_model = copy.deepcopy(trainer.model).to(memory_format=torch.contiguous_format)
        started = time.perf_counter()
        engine_history = trainer.fit(lambda metrics: None).history
        engine_seconds = time.perf_counter() - started

        optimizer = build_optimizer(config, plain_model.parameters())
        train = baseline.train_loader(data.train, args.batch_size, workers, seed)
        test = baseline.test_loader(data.test, args.batch_size, workers)
        started = time.perf_counter()
        plain = []
        for _ in range(epochs):
            loss = baseline.train_epoch(plain_model, optimizer, train, device)
            plain.append(
                {"train_loss": loss, "test_acc": baseline.accuracy(plain_model, test, device)}
            )
        runs.append(
            {
                "seed": seed,
                "engine": {
                    "test_acc": [m.test_acc for m in engine_history],
                    "train_loss": [m.train_loss for m in engine_history],
                    "seconds": engine_seconds,
                    "precision": trainer.precision,
                },
                "plain": {
                    "test_acc": [m["test_acc"] for m in plain],
                    "train_loss": [m["train_loss"] for m in plain],
                    "seconds": time.perf_counter() - started,
                    "precision": "fp32",
                },
            }
        )
    return {
        "mode": "accuracy",
        "environment": environment(device),
        "settings": {
            "model": args.models[0],
            "optimizer": "momentum",
            "lr": DEFAULTS.lr,
            "epochs": epochs,
            "batch_size": args.batch_size,
            "train_images": len(data.train),
            "test_images": len(data.test),
            "plain_workers": workers,
            "data": data.source,
        },
        "runs": runs,
    }


# --- the study's recipe --------------------------------------------------------------------


def time_box(started: float, limit: float | None):
    """An epoch callback that ends training after the epoch that passes `limit` seconds, but
    not before two epochs: the first holds the compilation, the second is the steady figure."""

    def check(metrics) -> None:
        if limit is not None and metrics.epoch >= 2 and time.perf_counter() - started > limit:
            raise StopTraining(f"time limit {limit:g} s")

    return check


def recipe(args: argparse.Namespace, device: torch.device) -> dict:
    """ResNet-18 end to end (decoded cache -> device -> 40 epochs with test evaluation), then
    Ghost-ResNet-18 for a few epochs: seconds per epoch of the two compared."""
    started = time.perf_counter()
    data = load(args)
    load_seconds = time.perf_counter() - started
    models = {}
    for name, epochs in (("resnet18", args.epochs or 40), ("ghost_resnet18", args.ghost_epochs)):
        reset_peak_memory(device)
        started = time.perf_counter()
        trainer = Trainer(config_for(args, name, device, epochs=epochs), data, device)
        history = trainer.fit(time_box(started, args.time_limit)).history
        seconds = time.perf_counter() - started
        steady = [m.epoch_seconds for m in history[1:]] or [history[0].epoch_seconds]
        left = epochs - len(history)  # epochs the time limit cut off
        models[name] = {
            "epochs": epochs,
            "epochs_trained": len(history),
            # The first epoch holds the compilation and warm-up: the rest are steady.
            "seconds": seconds + left * statistics.median(steady),
            "extrapolated": left > 0,
            "first_epoch_extra_seconds": history[0].epoch_seconds - statistics.median(steady),
            "max_memory_allocated": peak_memory_bytes(device),
            "epoch_seconds": [m.epoch_seconds for m in history],
            "median_epoch_seconds_after_first": statistics.median(steady),
            "images_per_second": statistics.median(m.images_per_second for m in history),
            "final_test_acc": history[-1].test_acc,
            "max_test_acc": max(m.test_acc for m in history),  # over epochs: optimistic
            "model_flops": forward_flops(trainer.model, device),
            "precision": trainer.precision,
        }
        del trainer
    models["resnet18"]["end_to_end_seconds"] = load_seconds + models["resnet18"]["seconds"]
    result = {
        "mode": "recipe",
        "environment": environment(device),
        "settings": {
            "batch_size": args.batch_size,
            "compile": args.compile,
            "train_images": len(data.train),
            "test_images": len(data.test),
            "load_seconds": load_seconds,
            "data": data.source,
        },
        "models": models,
    }
    result["targets"] = report.recipe_targets(result)
    return result


if __name__ == "__main__":
    warnings.simplefilter("default")  # show the --compile fallback warning
    try:
        main()
    except UserError as e:  # no CUDA, no data...: one line, as the CLI does
        sys.exit(f"error: {e}")
