"""What a sweep invocation will do with each configuration: run it, rerun an earlier run that did
not finish, or skip one that did; the `train` arguments that make a configuration; and the grid
of a tune's configurations at their tuned settings (`sweep --tuned`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from ..core.config import TrainConfig
from ..core.errors import UserError
from ..tracking import connection, tuning
from ..tracking.runs import FAILURE_TAG, FINISHED, TUNED_FROM_TAG
from ..tracking.training_runs import result_test_acc
from .grid import Grid, config_key

# What the finals take from the sweep rather than the tune: the full epochs, over its seeds,
# filed where it files them.
SWEEP_OWN = ("epochs", "seed", "experiment", "system_metrics")
TUNED = ("lr", "weight_decay")

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
                acc = result_test_acc(run.data.metrics)
                note = f"finished in run {run.info.run_id}" + (
                    f", test acc {acc:.4f}" if acc is not None else ""
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


def tuned_grid(tune_id: str, given: Collection[str], base: TrainConfig) -> Grid:
    """Tune `tune_id`'s configurations at their best trial's settings, as one group each (so the
    sweep plans, resumes and reports them as any grid), each run tagged `tuned_from`. Options
    given on the command line (`given`) and the sweep's own (SWEEP_OWN) are the base's; a group
    holds what its configuration has otherwise, where that differs from the base."""
    fixed = [k for k in TUNED if k in given]
    if fixed:
        raise UserError(
            f"--tuned trains at the tune's {fixed[0]}: leave out --{fixed[0].replace('_', '-')}"
        )
    connection.connect()
    axes = tuple(
        {f.name: (getattr(c, f.name),) for f in fields(TrainConfig)
         if f.name not in (*SWEEP_OWN, *given) and getattr(c, f.name) != getattr(base, f.name)}
        for c in tuning.tuned_configs(tune_id)
    )  # fmt: skip
    return Grid(axes=axes, source=f"tune {tune_id}", tags={TUNED_FROM_TAG: tune_id})
