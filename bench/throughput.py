"""Training throughput: the engine, the usual DataLoader recipe and the pure model step, timed in
interleaved blocks on the same model (see bench/bench_train.py)."""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time

import torch
from torch import nn

from bench import baseline, report
from bench.timing import (
    Variant,
    environment,
    interleaved,
    paired_ratio,
    peak_memory_bytes,
    per_batch_seconds,
    reset_peak_memory,
    summary,
)
from bench.workload import Block, config_for, endless, load
from cifar_mlflow.core.batches import DeviceBatches
from cifar_mlflow.core.data import Cifar10
from cifar_mlflow.core.engine import Trainer, build_optimizer, forward_flops

PIPELINE_BATCHES = 30


def throughput(args: argparse.Namespace, device: torch.device) -> dict:
    data = load(args)
    started = time.perf_counter()
    result = {
        "mode": "throughput",
        "environment": environment(device),
        "settings": {
            "batch_size": args.batch_size,
            "steps_per_block": args.steps,
            "rounds": args.rounds,
            "warmup_blocks": args.warmup,
            "workers": args.workers,
            "compile": args.compile,
            "torch_threads": torch.get_num_threads(),
            "train_images": len(data.train),
            "data": data.source,
        },
        "input_pipeline_ms": input_pipeline_ms(args, data, device),
        "models": {},
    }
    for name in args.models:
        reset_peak_memory(device)
        trainer, variants = throughput_variants(args, name, device, data)
        rates = interleaved(variants, args.rounds, args.warmup, device)
        clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)  # GPU work is not CPU time
        engine = rates["engine"]
        result["models"][name] = {
            "model_flops": forward_flops(trainer.model, device),
            "precision": trainer.precision,
            "max_memory_allocated": peak_memory_bytes(device),  # every variant's, together
            "images_per_second": {c: {k: summary(v[c]) for k, v in rates.items()} for c in clocks},
            "engine_over": {
                c: {k: paired_ratio(engine[c], v[c]) for k, v in rates.items() if k != "engine"}
                for c in clocks
            },
        }
        del trainer, variants
    result["environment"]["load_average_1min_end"] = os.getloadavg()[0]
    result["seconds"] = time.perf_counter() - started
    result["targets"] = report.throughput_targets(result)
    return result


def input_pipeline_ms(args: argparse.Namespace, data: Cifar10, device: torch.device) -> dict:
    """Milliseconds to make one training batch without training on it (median of
    PIPELINE_BATCHES): the engine's, and the baseline's with its transforms in this process.
    Steadier than the training blocks, and the whole of what the engine adds to the pure step."""
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    streams = {
        "engine": DeviceBatches(data.train, args.batch_size, device, True, generator),
        "baseline_w0": baseline.train_loader(data.train, args.batch_size, 0, seed=0),
    }
    costs = {}
    for name, batches in streams.items():
        stream = endless(batches)
        next(stream)  # the first also shuffles and allocates
        seconds = per_batch_seconds(stream, PIPELINE_BATCHES, device)
        costs[name] = {clock: statistics.median(v) * 1000 for clock, v in seconds.items()}
    return costs


def throughput_variants(args, name: str, device: torch.device, data: Cifar10):
    config = config_for(args, name, device)
    trainer = Trainer(config, data, device)
    # The baseline trains its own copy, made the usual way: default memory format, fp32.
    usual_model = copy.deepcopy(trainer.model).to(memory_format=torch.contiguous_format)
    usual_optimizer = build_optimizer(config, usual_model.parameters())

    engine_stream = endless(trainer.train_batches)

    def engine() -> int:
        block = Block(engine_stream, args.steps)
        trainer.train_one_epoch(block)  # the engine's own loop; ends by reading its sums
        return block.images

    premade = [(x.clone(), y.clone()) for x, y in itertools.islice(trainer.train_batches, 8)]
    premade_stream = itertools.cycle(premade)

    def pure() -> int:
        trainer.model.train()
        block = Block(premade_stream, args.steps)
        for images, labels in block:
            with trainer.autocast():
                loss = nn.functional.cross_entropy(trainer.step_model(images), labels)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
        return block.images

    def usual(workers: int):
        stream = endless(baseline.train_loader(data.train, args.batch_size, workers, config.seed))

        def run() -> int:
            usual_model.train()
            block = Block(stream, args.steps)
            for images, labels in block:
                baseline.train_step(usual_model, usual_optimizer, images, labels, device)
            return block.images

        return run

    variants = [Variant("engine", engine), Variant("pure", pure)]
    variants += [Variant(f"baseline_w{w}", usual(w)) for w in args.workers]
    return trainer, variants
