"""What a finished training says about itself: a line on the console, the run's description
(its Overview page in the MLflow UI) and a figure of its curves, all from the epochs it trained
(a resumed run's too) and judged as every other part of the tool judges a run: at the epoch with
the best validation accuracy (core.selection), its test accuracy reported, never used to choose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from ..core.config import TrainConfig
from ..core.engine import EpochMetrics
from ..core.selection import BestEpoch, best_epoch
from .progress import duration

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#2ca02c", "test": "#d62728"}  # matplotlib's tab10


@dataclass(frozen=True)
class Summary:
    run_id: str
    name: str
    config: TrainConfig
    facts: Mapping[str, object]  # device_used, precision_used, model_params, image counts
    history: Sequence[EpochMetrics]
    stopped_early: str | None = None

    @property
    def best(self) -> BestEpoch | None:
        return best_epoch((m.epoch, m.val_acc) for m in self.history)

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]

    def at(self, epoch: int) -> EpochMetrics:
        return next(m for m in self.history if m.epoch == epoch)

    @property
    def seconds(self) -> float:
        return sum(m.epoch_seconds for m in self.history)

    def judged(self) -> str:
        """'best epoch 7 of 40: val acc 0.8123, test acc 0.8050 (final 0.8012)'."""
        best, final = self.best, self.final
        if best is None:
            return f"final test acc {final.test_acc:.4f} after {final.epoch} epochs (no validation)"
        at_best = self.at(best.epoch)
        return (f"best epoch {best.epoch} of {final.epoch}: val acc {best.val_acc:.4f}, "
                f"test acc {at_best.test_acc:.4f} (final {final.test_acc:.4f})")  # fmt: skip

    def markdown(self) -> str:
        """The run's description: what it trained, how it did, where its models are."""
        c, final, best = self.config, self.final, self.best
        title = (f"**{c.model} · {c.activation} · {c.optimizer} · lr {c.lr:g} · batch "
                 f"{c.batch_size} · {c.epochs} epochs · seed {c.seed}**")  # fmt: skip
        lines = [title, ""]
        if best is not None:
            at_best = self.at(best.epoch)
            lines.append(f"- **Best epoch {best.epoch}** of {final.epoch}, chosen on validation: "
                         f"val acc {percent(best.val_acc)}, test acc "
                         f"{percent(at_best.test_acc)} (the `best` model)")  # fmt: skip
        lines.append(f"- **Final epoch {final.epoch}**: test acc {percent(final.test_acc)}"
                     + (f", val acc {percent(final.val_acc)}" if final.val_acc is not None else "")
                     + " (the `final` model)")  # fmt: skip
        if self.stopped_early:
            lines.append(f"- Stopped early: {self.stopped_early}")
        f = self.facts
        lines.append(f"- Trained for {duration(self.seconds)} on {f['device_used']} "
                     f"({f['precision_used']}): {f['model_params']:,} parameters, "
                     f"{f['train_images']:,} training / {f['val_images']:,} validation / "
                     f"{f['test_images']:,} test images")  # fmt: skip
        model = f"runs:/{self.run_id}/{'best' if best is not None else 'final'}"
        lines += ["", f"Curves: Artifacts → `curves.png`. The model: "
                      f'`mlflow.pytorch.load_model("{model}")`.']  # fmt: skip
        return "\n".join(lines)


def percent(fraction: float) -> str:
    return f"{fraction * 100:.2f} %"


def curves_figure(summary: Summary) -> Figure:
    """Loss and accuracy per epoch on train, validation and test, the best epoch marked."""
    figure = Figure(figsize=(10, 4), dpi=100)
    loss_axes, acc_axes = figure.subplots(1, 2)
    epochs = [m.epoch for m in summary.history]
    for split, colour in SPLIT_COLOURS.items():
        for axes, kind, scale in ((loss_axes, "loss", 1.0), (acc_axes, "acc", 100.0)):
            values = [getattr(m, f"{split}_{kind}") for m in summary.history]
            if any(v is not None for v in values):
                axes.plot(epochs, [v * scale if v is not None else None for v in values],
                          color=colour, label=split, marker="o" if len(epochs) <= 20 else None,
                          markersize=3)  # fmt: skip
    best = summary.best
    if best is not None:
        for axes in (loss_axes, acc_axes):
            axes.axvline(best.epoch, color="#7f7f7f", linestyle="--", linewidth=1,
                         label=f"best epoch {best.epoch} (on validation)")  # fmt: skip
    loss_axes.set_ylabel("loss (cross-entropy)")
    acc_axes.set_ylabel("accuracy (%)")
    for axes in (loss_axes, acc_axes):
        axes.set_xlabel("epoch")
        axes.grid(True, alpha=0.3)
    acc_axes.legend(fontsize="small")
    figure.suptitle(f"{summary.name} (run {summary.run_id[:12]})")
    figure.tight_layout()
    return figure
