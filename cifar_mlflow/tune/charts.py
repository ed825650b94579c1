"""A configuration's trials as a chart: best val accuracy against learning rate (log axis),
coloured by how each trial ended. A tune has a few configurations, so a plain matplotlib figure
each (~0.1 s). Failed and killed trials have no accuracy to
show: they sit on the x axis, as crosses, so a diverging range is seen where it starts."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from ..tracking.tuning import TrialRecord

OUTCOME_STYLE = {  # outcome: (colour, marker) in matplotlib's tab10
    "complete": ("#2ca02c", "o"), "pruned": ("#ff7f0e", "s"),
    "failed": ("#d62728", "x"), "killed": ("#7f7f7f", "x"), "running": ("#7f7f7f", "x"),
}  # fmt: skip


def val_acc_vs_lr(name: str, trials: Sequence[TrialRecord], best: TrialRecord | None) -> Figure:
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    for outcome, (colour, marker) in OUTCOME_STYLE.items():
        shown = [t for t in trials if t.outcome == outcome]
        if shown:
            accs = [t.best_val_acc if t.best_val_acc is not None else 0.0 for t in shown]
            axes.scatter([t.lr for t in shown], accs, c=colour, marker=marker,
                         label=f"{outcome} ({len(shown)})")  # fmt: skip
    if best is not None:
        axes.axvline(best.lr, color="#7f7f7f", linestyle="--", linewidth=1,
                     label=f"best lr {best.lr:.3g}")  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("best val acc (max over the trial's epochs)")
    axes.set_ylim(0, 1)
    axes.set_title(f"{name}: {len(trials)} trials")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
