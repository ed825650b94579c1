"""What the training benchmark trains on: the images, the config, and endless streams of batches
cut into timed blocks."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable, Iterator

import torch

from cifar_mlflow.core.config import TrainConfig
from cifar_mlflow.core.data import Cifar10, load_cifar10


def load(args: argparse.Namespace, train_limit: int = 0, test_limit: int = 0) -> Cifar10:
    """The images, limited by --train-limit/--test-limit, else by the mode's own limits."""
    return load_cifar10(
        args.data_dir, args.train_limit or train_limit, args.test_limit or test_limit
    )


def config_for(
    args: argparse.Namespace, model: str, device: torch.device, **changes
) -> TrainConfig:
    return TrainConfig(
        model=model,
        batch_size=args.batch_size,
        device=device.type,
        precision=args.precision,
        compile=args.compile,
        data_dir=args.data_dir,
        **changes,
    )


class Block:
    """The next `steps` batches of an endless stream, counting the images handed out."""

    def __init__(self, stream: Iterator, steps: int):
        self.stream, self.steps, self.images = stream, steps, 0

    def __iter__(self) -> Iterator:
        for images, labels in itertools.islice(self.stream, self.steps):
            self.images += len(labels)
            yield images, labels


def endless(batches: Iterable) -> Iterator:
    """Epoch after epoch: each pass re-shuffles (and, for a DataLoader, restarts its workers)."""
    while True:
        yield from batches
