"""The training paths that only a GPU takes, checked where they run: the precision `auto` picks
(bf16 where the GPU has it, else fp16 with a gradient scaler), each precision training to a
finite loss, the newest registry entries (adamw, silu), and a compiled step that compiles once
(every training batch has one shape). Writes what it saw as JSON and exits 1 if a check failed.

    python bench/gpu_paths.py --device cuda --data-dir DATA --out paths-cuda.json
    python bench/gpu_paths.py --device cpu --data-dir DATA --out paths-cpu.json --train-limit 20

On a CPU the same checks run (fp16 and bf16 autocast exist there too) except compiling, which
takes minutes there (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import environment, synchronize
from cifar_mlflow.core.config import TrainConfig
from cifar_mlflow.core.data import load_cifar10
from cifar_mlflow.core.engine import Trainer, resolve_device, resolve_precision
from cifar_mlflow.core.errors import UserError

# A step that takes this many times the median step is a compile (seconds against milliseconds).
COMPILE_STEP_FACTOR = 20


def train_epochs(config: TrainConfig, data, device: torch.device) -> dict:
    """Train `config` for its epochs, timing each step (synchronised): what the run would log."""
    trainer = Trainer(config, data, device)
    steps: list[float] = []

    def timed(batches, epoch):
        for batch in batches:
            started = time.perf_counter()
            yield batch
            synchronize(device)
            steps.append(time.perf_counter() - started)

    history = trainer.fit(lambda m: None, timed).history
    shapes = {tuple(images.shape) for images, _ in trainer.train_batches}
    median = statistics.median(steps)
    return {
        "precision_used": trainer.precision,
        "compile_used": trainer.compile_used,
        "compile_fallback": trainer.compile_fallback,
        "scaler_scale": trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None,
        "train_loss": [m.train_loss for m in history],
        "epoch_seconds": [m.epoch_seconds for m in history],
        "training_batch_shapes": len(shapes),
        "steps": len(steps),
        "slow_steps": sum(s > COMPILE_STEP_FACTOR * median for s in steps),
    }


def check(results: dict, device: torch.device, compiled: bool) -> list[str]:
    """What went wrong, as lines; none when every path worked."""
    failed = []
    for name, run in results["runs"].items():
        if not all(math.isfinite(x) for x in run["train_loss"]):
            failed.append(f"{name}: train loss {run['train_loss']}")
        if run["training_batch_shapes"] != 1:
            failed.append(f"{name}: {run['training_batch_shapes']} training batch shapes")
    auto = results["auto_precision"]
    if device.type == "cuda":
        expected = "bf16" if results["bf16_supported"] else "fp16"
        if auto != expected:
            failed.append(f"auto precision {auto}, expected {expected}")
    elif auto != "fp32":
        failed.append(f"auto precision on a CPU: {auto}")
    fp16 = results["runs"].get("fp16")
    if fp16 and fp16["scaler_scale"] is None:
        failed.append("fp16 trained without its gradient scaler")
    if compiled:
        run = results["runs"]["compiled"]
        if not run["compile_used"]:
            failed.append(f"compile fell back: {run['compile_fallback']}")
        elif run["slow_steps"] > 1:  # the first step compiles; any other slow one recompiled
            failed.append(f"compiled {run['slow_steps']} times in {run['steps']} steps")
    return failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-limit", type=int, default=2600)  # 20 batches and 40 left
    p.add_argument("--test-limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled run")
    args = p.parse_args()

    device = resolve_device(args.device)
    data = load_cifar10(args.data_dir, args.train_limit, args.test_limit, 0, 0)
    # A training set that is not a multiple of the batch: the last partial batch is dropped.
    base = TrainConfig(device=device.type, epochs=args.epochs, batch_size=args.batch_size,
                       train_limit=args.train_limit, test_limit=args.test_limit,
                       val_size=0)  # fmt: skip
    bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    results: dict = {"environment": environment(device), "bf16_supported": bf16,
                     "auto_precision": resolve_precision("auto", device), "runs": {}}  # fmt: skip
    if not bf16:
        try:
            resolve_precision("bf16", device)
            results["bf16_refused"] = None
        except UserError as e:
            results["bf16_refused"] = str(e)
    variants = {"fp32": {"precision": "fp32"}, "fp16": {"precision": "fp16"},
                "adamw_silu": {"optimizer": "adamw", "activation": "silu", "lr": 1e-3,
                               "weight_decay": 0.05}}  # fmt: skip
    if bf16:
        variants["bf16"] = {"precision": "bf16"}
    compiled = device.type == "cuda" and not args.no_compile
    if compiled:
        variants["compiled"] = {"compile": True, "epochs": max(args.epochs, 2)}
    for name, changes in variants.items():
        config = TrainConfig(**{**base.as_params(), **changes})
        results["runs"][name] = train_epochs(config, data, device)
        print(name, json.dumps(results["runs"][name]), flush=True)
    results["failed"] = check(results, device, compiled)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for line in results["failed"]:
        print(f"FAILED: {line}", flush=True)
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
