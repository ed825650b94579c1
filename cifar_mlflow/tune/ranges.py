"""What a tune searches, and where by default: plain data, imported by the command's options
(so `tune --help` shows the ranges without loading Optuna) and by the tune's work."""

from __future__ import annotations

import math

from ..core.config import OPTIMIZERS

# Log-uniform ranges wide enough to hold each optimizer's usual best on CIFAR-10 ResNets at
# batch 128 (SGD ~0.1, momentum ~0.05, Adam and AdamW ~1e-3) with a decade or more either side.
DEFAULT_LR_RANGES = {"sgd": (1e-3, 1.0), "momentum": (1e-4, 0.3), "adam": (1e-5, 1e-2),
                     "adamw": (1e-5, 1e-2)}  # fmt: skip
assert set(DEFAULT_LR_RANGES) == set(OPTIMIZERS)
STUDY_OPTIMIZERS = ("sgd", "momentum", "adam")  # the optimizer study a tune runs by default
SEARCHED = ("lr",)  # not options of a tune: what it searches
# No trial is pruned before this share of its epochs, nor before epoch MIN_EPOCHS_BEFORE_PRUNING:
# low learning rates and sigmoid start slowly, and an epoch-1 cut would search them out.
PRUNE_WARMUP_SHARE = 0.25
MIN_EPOCHS_BEFORE_PRUNING = 2
WARMUP_HELP = (
    f"no trial is pruned before epoch max({MIN_EPOCHS_BEFORE_PRUNING}, ceil(epochs/"
    f"{round(1 / PRUNE_WARMUP_SHARE)})), so slow starters (a low lr, sigmoid) are not cut early"
)


def first_prunable_epoch(epochs: int) -> int:
    """The first epoch at which a trial of `epochs` may be pruned (Optuna's n_warmup_steps and
    ASHA's grace period: epochs are the steps, numbered from 1)."""
    return max(MIN_EPOCHS_BEFORE_PRUNING, math.ceil(epochs * PRUNE_WARMUP_SHARE))
