"""Interleaved timing for a shared, noisy machine, and the facts a figure needs beside it.

Every variant runs one block per round, so a slow spell (another process taking the cores, a GPU
clock change) hits every variant alike, and ratios are taken within a round. The orders form a
Williams design: over a cycle of rounds each variant runs right after every other equally often,
so what one leaves behind (DataLoader workers refilling their queue, a cold cache) falls on all.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch


@dataclass(frozen=True)
class Variant:
    name: str
    run_block: Callable[[], int]  # trains one block, returns how many images it trained on


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    variants: list[Variant], rounds: int, warmup: int, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Each variant's blocks, after `warmup` untimed blocks each, as images per second of wall
    time ("wall") and per second of this process's CPU time, all its threads ("cpu").

    On a CPU shared with other work the CPU clock is the steadier of the two (measured on 2
    cores at load 7, ResNet-18, batch 32: a step took 6.6-13.1 s of wall time, 3.9-4.5 s of CPU
    time); it leaves out DataLoader workers, which flatters the baseline."""
    for variant in variants:
        for _ in range(warmup):
            variant.run_block()
    synchronize(device)
    rates = {v.name: {"wall": [], "cpu": []} for v in variants}
    orders = williams_orders(len(variants))
    for r in range(rounds):
        for variant in (variants[i] for i in orders[r % len(orders)]):
            wall, cpu = time.perf_counter(), time.process_time()
            images = variant.run_block()
            synchronize(device)
            rates[variant.name]["wall"].append(images / (time.perf_counter() - wall))
            rates[variant.name]["cpu"].append(images / (time.process_time() - cpu))
    return rates


def williams_orders(n: int) -> list[list[int]]:
    """Orders of n variants in which each follows every other equally often (Williams, 1949):
    n orders for an even n, 2n for an odd one."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    orders = [[(v + shift) % n for v in first] for shift in range(n)]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """The most GPU memory torch's allocator held since `reset_peak_memory` (None on a CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def per_batch_seconds(
    batches: Iterator, count: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall and CPU seconds to make each of `count` batches, without training on them."""
    times: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(count):
        wall, cpu = time.perf_counter(), time.process_time()
        next(batches)
        synchronize(device)
        times["wall"].append(time.perf_counter() - wall)
        times["cpu"].append(time.process_time() - cpu)
    return times


def summary(values: list[float]) -> dict[str, object]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, object]:
    """Round-by-round ratios of two variants' rates, summarised."""
    return summary([a / b for a, b in zip(numerator, denominator)])


def environment(device: torch.device) -> dict[str, object]:
    import torchvision

    facts: dict[str, object] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        facts["cuda"] = torch.version.cuda
        facts["cudnn"] = torch.backends.cudnn.version()
    return facts


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or sys.platform
