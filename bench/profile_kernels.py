"""Where a training step's time goes, by kind of kernel: Ghost-ResNet-18 against ResNet-18.

The study found Ghost-ResNet-18 slower per epoch than ResNet-18 despite half the FLOPs; the
explanation to test is many small kernels (each Ghost module: two convolutions, one of them
depthwise, two batch norms, two activations, a concatenation, a slice). torch.profiler records
--steps engine training steps of each model (after --warmup untimed ones): on CUDA its kernels
(the GPU's time), on a CPU its operators (the CPU's time). Both are sorted into classes by name,
with counts and time per step.

    python bench/profile_kernels.py --device cuda
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from torch.profiler import ProfilerActivity, profile

from bench import report
from bench.timing import environment, synchronize
from bench.workload import Block, config_for, endless, load
from cifar_mlflow.core.config import DEFAULTS
from cifar_mlflow.core.engine import Trainer, resolve_device
from cifar_mlflow.core.models import MODELS

# Kernel and operator names to classes, first match wins (cuDNN, cuBLAS, Triton and ATen names):
# a rough sort, good for counts and shares, with the largest kernels listed by name beside it.
CLASSES = (
    ("depthwise conv", r"depthwise|dwconv|grouped"),
    ("conv / matmul", r"conv|gemm|cutlass|sm\d+_xmma|wgrad|dgrad|implicit|cudnn|mm_|addmm|matmul"),
    ("batch norm", r"batch_norm|bn_|batchnorm|welford"),
    ("optimizer", r"foreach|multi_tensor|sgd|adam|lerp|addcmul"),
    ("concat / slice / copy", r"cat|copy|slice|index|transpose|contiguous|memcpy|memset"),
    ("activation / elementwise", r"elementwise|relu|gelu|sigmoid|leaky|threshold|vectorized|unrolled|add_|mul_|triton_poi"),
    ("reduction / loss", r"reduce|softmax|nll|cross_entropy|sum|mean|triton_red|triton_per"),
)  # fmt: skip
TOP_KERNELS = 8


def classify(name: str) -> str:
    lowered = name.lower()
    return next((cls for cls, pattern in CLASSES if re.search(pattern, lowered)), "other")


def profile_model(args: argparse.Namespace, name: str, device: torch.device, data) -> dict:
    trainer = Trainer(config_for(args, name, device), data, device)
    stream = endless(trainer.train_batches)
    trainer.train_one_epoch(Block(stream, args.warmup))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as recorded:
        trainer.train_one_epoch(Block(stream, args.steps))
        synchronize(device)
    on_gpu = device.type == "cuda"
    classes: dict[str, dict[str, float]] = {}
    kernels = []
    for event in recorded.key_averages():
        if on_gpu:  # the kernels themselves: what the GPU spent its time on
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            # self_cuda_time_total: its name before torch 2.4
            microseconds = getattr(event, "self_device_time_total", None)
            if microseconds is None:
                microseconds = event.self_cuda_time_total
        else:  # operators, by their own CPU time (not their children's)
            if not event.key.startswith("aten::") or event.self_cpu_time_total <= 0:
                continue
            microseconds = event.self_cpu_time_total
        cls = classes.setdefault(classify(event.key), {"count": 0, "milliseconds": 0.0})
        cls["count"] += event.count / args.steps
        cls["milliseconds"] += microseconds / 1000 / args.steps
        kernels.append((microseconds / 1000 / args.steps, event.count / args.steps, event.key))
    kernels.sort(reverse=True)
    return {
        "measured": "CUDA kernels" if on_gpu else "CPU operators",
        "steps": args.steps,
        "per_step": {
            "count": sum(c["count"] for c in classes.values()),
            "milliseconds": sum(c["milliseconds"] for c in classes.values()),
        },
        "classes": dict(sorted(classes.items(), key=lambda kv: -kv[1]["milliseconds"])),
        "top": [{"name": k[:120], "milliseconds": ms, "count": n} for ms, n, k in kernels[:TOP_KERNELS]],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", default=DEFAULTS.data_dir)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--steps", type=int, default=20, help="profiled steps per model")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=100)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    data = load(args)
    result = {
        "mode": "profile",
        "environment": environment(device),
        "settings": {"batch_size": args.batch_size, "steps": args.steps, "compile": args.compile},
        "models": {
            name: profile_model(args, name, device, data) for name in args.models.split(",")
        },
    }
    path = args.results / f"{report.results_name('profile', device.type, args.compile)}.json"
    report.write_json(path, result)
    print(report.render(result))


if __name__ == "__main__":
    main()
