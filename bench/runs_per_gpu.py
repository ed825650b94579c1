"""Several trainings sharing one GPU: the aggregate throughput of K engine processes at once.

What `cifar-mlflow sweep --runs-per-gpu K` does, without MLflow (the GPU machine has none): K
processes at once, each pinned to its slot's GPU by CUDA_VISIBLE_DEVICES, each training one of
the study's 7 configurations (the first K of them, cycled). Every process loads the data,
warms up, waits at a barrier until all K are warm, then trains for --seconds in the engine's
own loop; the aggregate is all their images over the common window (first start to last end),
so start-up, which a long run amortises, is left out and reported apart.

    python bench/runs_per_gpu.py --device cuda --ks 1,2,4,8 --seconds 6

The estimate for the whole study (7 configurations x 40 epochs x 50,000 images) divides its
images by the aggregate rate at K: an estimate, since the mix of models differs with K.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report
from bench.timing import environment, peak_memory_bytes
from bench.workload import Block, endless
from cifar_mlflow.core.config import DEFAULTS, TrainConfig

STUDY_EPOCHS, STUDY_TRAIN_IMAGES = 40, 50_000
BARRIER_SECONDS = 300  # the last of K processes to be warm, on a machine loaded by the others


def study_configs(base: TrainConfig) -> list[TrainConfig]:
    from cifar_mlflow.sweep.grid import DEFAULT_AXES, expand  # click, yaml, scikit-learn

    return expand(base, DEFAULT_AXES, (base.seed,))


def worker(args: argparse.Namespace) -> None:
    """One training process: warm up, meet the others at the barrier, train --seconds."""
    from cifar_mlflow.core.data import load_cifar10
    from cifar_mlflow.core.engine import Trainer, resolve_device

    config = TrainConfig(**json.loads(args.config))
    device = resolve_device(config.device)
    started = time.time()
    data = load_cifar10(config.data_dir, config.train_limit, config.test_limit, 0, config.seed)
    trainer = Trainer(config, data, device)
    stream = endless(trainer.train_batches)
    trainer.train_one_epoch(Block(stream, args.warmup_steps))  # reads its sums: synchronised
    barrier = Path(args.barrier)
    (barrier / f"{args.index}.ready").touch()
    deadline = time.monotonic() + BARRIER_SECONDS
    while len(list(barrier.glob("*.ready"))) < args.count and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.time()
    images = 0
    while time.time() - start < args.seconds:
        block = Block(stream, args.block_steps)
        trainer.train_one_epoch(block)
        images += block.images
    end = time.time()
    print(json.dumps({"config": config.run_name, "images": images, "start": start, "end": end,
                      "startup_seconds": start - started,
                      "max_memory_allocated": peak_memory_bytes(device)}))  # fmt: skip


def measure(args: argparse.Namespace, k: int, configs: list[TrainConfig], gpu: str | None) -> dict:
    """K processes at once (as the local executor starts them); their aggregate rate."""
    with tempfile.TemporaryDirectory(prefix="runs-per-gpu-") as barrier:
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
        common = ["--count", str(k), "--barrier", barrier, "--seconds", str(args.seconds),
                  "--warmup-steps", str(args.warmup_steps),
                  "--block-steps", str(args.block_steps)]  # fmt: skip
        processes = []
        for i in range(k):
            config = json.dumps(dataclasses.asdict(configs[i % len(configs)]))
            command = [sys.executable, __file__, "worker", "--config", config, "--index", str(i)]
            processes.append(
                subprocess.Popen([*command, *common], stdout=subprocess.PIPE, text=True, env=env)
            )
        outputs = [p.communicate()[0] for p in processes]
    done = [json.loads(out.strip().splitlines()[-1]) for p, out in zip(processes, outputs)
            if p.returncode == 0 and out.strip()]  # fmt: skip
    if len(done) < k:
        return {"k": k, "failed": k - len(done), "processes": done}
    window = max(d["end"] for d in done) - min(d["start"] for d in done)
    rate = sum(d["images"] for d in done) / window
    study_images = len(configs) * STUDY_EPOCHS * STUDY_TRAIN_IMAGES
    return {
        "k": k,
        "configs": [d["config"] for d in done],
        "window_seconds": window,
        "images_per_second": rate,
        "per_process_images_per_second": [d["images"] / (d["end"] - d["start"]) for d in done],
        "startup_seconds": [d["startup_seconds"] for d in done],
        "max_memory_allocated": [d["max_memory_allocated"] for d in done],
        "study_seconds_estimate": study_images / rate,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("role", nargs="?", default="driver", choices=("driver", "worker"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", default=DEFAULTS.data_dir)
    p.add_argument("--ks", default="1,2,4,8", help="processes at once, comma-separated")
    p.add_argument("--seconds", type=float, default=6.0, help="the timed window of each K")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--block-steps", type=int, default=10,
                   help="steps between looks at the clock (the engine reads its sums once a block)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=100, help="loaded, never evaluated here")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--config", help=argparse.SUPPRESS)  # worker: its TrainConfig as JSON
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "worker":
        return worker(args)

    from cifar_mlflow.core.engine import resolve_device

    device = resolve_device(args.device)
    base = dataclasses.replace(DEFAULTS, device=device.type, data_dir=args.data_dir,
                               batch_size=args.batch_size, train_limit=args.train_limit,
                               test_limit=args.test_limit, val_size=0, system_metrics=False)  # fmt: skip
    configs = study_configs(base)
    gpu = "0" if device.type == "cuda" else None  # one GPU: every slot on it
    result = {
        "mode": "runs_per_gpu",
        "environment": environment(device),
        "settings": {
            "batch_size": args.batch_size,
            "seconds": args.seconds,
            "warmup_steps": args.warmup_steps,
            "configurations": len(configs),
            "train_limit": args.train_limit,
        },
        "runs": [measure(args, int(k), configs, gpu) for k in args.ks.split(",")],
    }
    path = args.results / f"{report.results_name('runs_per_gpu', device.type, False)}.json"
    report.write_json(path, result)
    print(report.render(result))


if __name__ == "__main__":
    main()
