"""What a tune searches, and where by default: plain data, imported by the command's options
(so `tune --help` shows the ranges without loading Optuna) and by the tune's work."""

from __future__ import annotations

from ..core.config import OPTIMIZERS

# Log-uniform ranges wide enough to hold each optimizer's usual best on CIFAR-10 ResNets at
# batch 128 (SGD ~0.1, momentum ~0.05, Adam ~1e-3) with a decade or more either side.
DEFAULT_LR_RANGES = {"sgd": (1e-3, 1.0), "momentum": (1e-4, 0.3), "adam": (1e-5, 1e-2)}
assert set(DEFAULT_LR_RANGES) == set(OPTIMIZERS)
SEARCHED = ("lr",)  # not options of a tune: what it searches
