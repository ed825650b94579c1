"""What a person watching a tune sees: a line per trial event (started with its settings,
epoch k/n with its val acc, pruned at k, finished with its best val acc, failed and why), then a
table of each configuration's best setting. Lines rather than bars: a tune's trials are short
and many, and its log then reads as a history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import click

from ..tracking.tuning import TrialRecord

OUTCOMES = ("complete", "pruned", "failed", "killed")  # how a trial's run ended


def settings_text(settings: Mapping[str, float]) -> str:
    names = {"lr": "lr", "weight_decay": "wd"}
    return ", ".join(f"{names.get(k, k)} {v:.3g}" for k, v in settings.items())


class TrialLines:
    """One line per event of a trial, labelled "<configuration> trial <n>"."""

    def started(self, label: str, settings: Mapping[str, float]) -> None:
        click.echo(f"  {label} ({settings_text(settings)}): started")

    def epoch(self, label: str, epoch: int, epochs: int, val_acc: float | None) -> None:
        acc = f"val acc {val_acc:.4f}" if val_acc is not None else "no val acc"
        click.echo(f"  {label}: epoch {epoch}/{epochs} {acc}")

    def pruned(self, label: str, epoch: int, epochs: int) -> None:
        click.echo(f"  {label}: pruned at epoch {epoch}/{epochs}")

    def finished(self, label: str, best_val_acc: float | None, run_id: str) -> None:
        acc = f"best val acc {best_val_acc:.4f}" if best_val_acc is not None else "no val acc"
        click.echo(f"  {label}: finished, {acc} (run {run_id})")

    def failed(self, label: str, reason: str) -> None:
        click.echo(f"  {label}: failed: {reason}")


@dataclass(frozen=True)
class ConfigurationTrials:
    """One configuration of the tune as the summary shows it."""

    name: str
    run_id: str  # the configuration's run
    trials: Sequence[TrialRecord]
    best: TrialRecord | None

    def count(self, outcome: str) -> int:
        return sum(t.outcome == outcome for t in self.trials)


def best_trial(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The completed trial with the highest best val acc; pruned trials trained fewer epochs
    and so are not comparable (Optuna's best trial is a complete one too)."""
    complete = [t for t in trials if t.outcome == "complete" and t.best_val_acc is not None]
    return max(complete, key=lambda t: t.best_val_acc, default=None)


def summary_columns(rows: Sequence[ConfigurationTrials]) -> dict[str, list]:
    """The summary as columns (MLflow's table artifact); the best val acc is the max over the
    best trial's epochs on the validation split, the score the search maximised."""
    return {
        "configuration": [r.name for r in rows],
        "best_lr": [r.best.lr if r.best else None for r in rows],
        "best_weight_decay": [r.best.weight_decay if r.best else None for r in rows],
        "best_val_acc": [r.best.best_val_acc if r.best else None for r in rows],
        **{outcome: [r.count(outcome) for r in rows] for outcome in OUTCOMES},
        "best_trial_run": [r.best.run_id if r.best else "" for r in rows],
        "configuration_run": [r.run_id for r in rows],
    }  # fmt: skip


def summary_text(rows: Sequence[ConfigurationTrials]) -> str:
    width = max([len(r.name) for r in rows] + [len("configuration")])
    header = ["configuration".ljust(width), f"{'best lr':>9}", f"{'wd':>9}", "val acc", *OUTCOMES]
    lines = ["  " + "  ".join(header)]
    for r in rows:
        best = (f"{r.best.lr:>9.3g}  {r.best.weight_decay:>9.3g}  {r.best.best_val_acc:>7.4f}"
                if r.best else f"{'-':>9}  {'-':>9}  {'-':>7}")  # fmt: skip
        counts = "  ".join(f"{r.count(o):>{len(o)}}" for o in OUTCOMES)
        lines.append(f"  {r.name:<{width}}  {best}  {counts}")
    return "\n".join(lines)
