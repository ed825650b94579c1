"""Which epoch a run is judged by: the one with the highest validation accuracy, ties to the
earlier epoch. The test set never enters the choice; the test accuracy of the chosen epoch is
reported beside it (`test_acc_at_best`), never used to choose.

The rule is written once, in `BestEpoch.offer`: training (the weights it keeps, its summary
metrics), a tune's trials (their score), and compare (the epoch it reads a run's result at) all
go through it. The module needs no torch, so compare can use it without loading torch.

`BestWeights` keeps a copy of the weights of that epoch while training runs, so that the run can
log them at its end and a resumed run ends with the same `best` as an uninterrupted one (the copy
travels in the resume checkpoint, core/checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class BestEpoch:
    """The best epoch so far, offered the epochs in order."""

    epoch: int = 0  # 0: no epoch with a validation accuracy yet
    val_acc: float = float("-inf")

    def offer(self, epoch: int, val_acc: float | None) -> bool:
        """Take `epoch` if its val_acc is strictly higher than every earlier one (so ties keep
        the earlier epoch; None and NaN never win); True if it was taken."""
        if val_acc is None or not val_acc > self.val_acc:
            return False
        self.epoch, self.val_acc = epoch, val_acc
        return True

    @property
    def found(self) -> bool:
        return self.epoch > 0


def best_epoch(val_acc: Iterable[tuple[int, float | None]]) -> BestEpoch | None:
    """The best of (epoch, val_acc) pairs, in any order; None when no epoch has a val_acc."""
    best = BestEpoch()
    for epoch, value in sorted(val_acc):
        best.offer(epoch, value)
    return best if best.found else None


@dataclass
class BestWeights:
    """The weights of the best epoch so far, copied on the device (no host synchronisation) only
    when an epoch is the new best."""

    best: BestEpoch = field(default_factory=BestEpoch)
    weights: dict[str, torch.Tensor] | None = None

    @property
    def epoch(self) -> int:
        return self.best.epoch

    def offer(self, epoch: int, val_acc: float | None, model: nn.Module) -> bool:
        """Keep `model`'s weights if `epoch` is the best so far; True if it was."""
        if not self.best.offer(epoch, val_acc):
            return False
        self.weights = _copy(model)
        return True

    def state(self, last_epoch: int) -> dict:
        """For the resume checkpoint. When the best epoch is the last one, its weights are the
        model's own, which the checkpoint holds already: they are not stored twice."""
        keep = self.weights if self.best.found and self.epoch != last_epoch else None
        return {"epoch": self.epoch, "val_acc": self.best.val_acc, "weights": keep}

    @classmethod
    def from_state(cls, state: dict | None, model: nn.Module, last_epoch: int) -> BestWeights:
        if not state or not state["epoch"]:
            return cls()
        weights = state["weights"]
        if weights is None and state["epoch"] == last_epoch:
            weights = _copy(model)
        return cls(BestEpoch(state["epoch"], state["val_acc"]), weights)


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
