"""What a sweep invocation will do with each configuration: run it, rerun an earlier run that did
not finish, or skip one that did; and the `train` arguments that make a configuration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from ..core.config import TrainConfig
from ..tracking.runs import FAILURE_TAG, FINISHED
from .grid import config_key

if TYPE_CHECKING:
    from mlflow.entities import Run


@dataclass(frozen=True)
class Planned:
    """One configuration of the sweep and its run in an earlier invocation, if any."""

    config: TrainConfig
    key: str
    previous: Run | None

    @property
    def action(self) -> str:
        if self.previous is None:
            return "run"
        return "skip" if self.previous.info.status == FINISHED else "rerun"


def make_plan(configs: Sequence[TrainConfig], children: Mapping[str, Run]) -> list[Planned]:
    return [Planned(c, config_key(c), children.get(config_key(c))) for c in configs]


def plan_lines(plan: Sequence[Planned]) -> list[str]:
    width = max(len(p.config.run_name) for p in plan)
    lines = []
    for p in plan:
        note = ""
        if p.previous is not None:
            run = p.previous
            if p.action == "skip":
                acc = run.data.metrics.get("best_test_acc")
                note = f"finished in run {run.info.run_id}" + (
                    f", best test acc {acc:.4f}" if acc is not None else ""
                )
            else:
                reason = run.data.tags.get(FAILURE_TAG)
                note = f"{run.info.status} in run {run.info.run_id}" + (
                    f": {reason}" if reason else ""
                )
                note += "; continues from its last checkpoint, if any"
        lines.append(f"  {p.action:<5}  {p.config.run_name:<{width}}  {note}".rstrip())
    return lines


def child_args(config: TrainConfig) -> tuple[str, ...]:
    """The `cifar-mlflow train` options that make exactly `config`."""
    args = []
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        args += [
            "--" + f.name.replace("_", "-"),
            str(value).lower() if isinstance(value, bool) else str(value),
        ]
    return tuple(args)
