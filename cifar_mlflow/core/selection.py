"""Which epoch a run is judged by: the one with the highest validation accuracy, ties to the
earlier epoch. The test set never enters the choice; the test accuracy of the chosen epoch is
reported beside it (`test_acc_at_best`), never used to choose.

`BestWeights` keeps a copy of the weights of that epoch while training runs, so that the run can
log them at its end and a resumed run ends with the same `best` as an uninterrupted one (the copy
travels in the resume checkpoint, core/checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .engine import EpochMetrics


def best_epoch(history: Iterable[EpochMetrics]) -> EpochMetrics | None:
    """The epoch with the highest val_acc (the earliest of equals); None without validation."""
    scored = [m for m in history if m.val_acc is not None]
    return max(scored, key=lambda m: (m.val_acc, -m.epoch)) if scored else None


@dataclass
class BestWeights:
    """The weights of the best epoch so far. A copy is taken only when an epoch is strictly
    better than every earlier one (so ties keep the earlier epoch, as best_epoch does); on the
    device, so taking it costs no host synchronisation."""

    epoch: int = 0  # 0: no epoch with validation yet
    val_acc: float = float("-inf")
    weights: dict[str, torch.Tensor] | None = None

    def offer(self, metrics: EpochMetrics, model: nn.Module) -> bool:
        """Keep `model`'s weights if `metrics` is the best epoch so far; True if it was."""
        if metrics.val_acc is None or not metrics.val_acc > self.val_acc:
            return False
        self.epoch, self.val_acc = metrics.epoch, metrics.val_acc
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def state(self, last_epoch: int) -> dict:
        """For the resume checkpoint. When the best epoch is the last one, its weights are the
        model's own, which the checkpoint holds already: they are not stored twice."""
        keep = self.weights if self.epoch and self.epoch != last_epoch else None
        return {"epoch": self.epoch, "val_acc": self.val_acc, "weights": keep}

    @classmethod
    def from_state(cls, state: dict | None, model: nn.Module, last_epoch: int) -> BestWeights:
        if not state or not state["epoch"]:
            return cls()
        weights = state["weights"]
        if weights is None and state["epoch"] == last_epoch:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(state["epoch"], state["val_acc"], weights)
