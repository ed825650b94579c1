"""What a person watching a training run sees: a tqdm bar per epoch on a terminal, and one
summary line per epoch everywhere (a log file gets only those lines); and, for a process that
started this one (a sweep), the same progress as structured events (train/events.py)."""

from __future__ import annotations

import shutil
import sys
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from ..core.engine import EpochMetrics
from .events import Epoch, EventWriter, Started

if TYPE_CHECKING:
    from .summary import Summary


class EpochReporter:
    def __init__(self, epochs: int, stream=None, events: EventWriter | None = None):
        self.epochs = epochs
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.events = events or EventWriter.from_environment()

    def on_start(self, run_id: str, facts: dict) -> None:
        self.events.send(Started(run_id, self.epochs))
        click.echo(
            f"run {run_id}: {facts['model_params']:,} parameters on {facts['device_used']} "
            f"({facts['precision_used']}), {facts['train_images']} train / "
            f"{facts['test_images']} test images",
            err=True,
        )

    def wrap(self, batches, epoch: int):
        if not self.interactive:
            return batches
        # shutil falls back to 100 columns where the terminal reports none (tqdm would draw an
        # empty bar there).
        return tqdm(
            batches, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=False,
            file=self.stream, ncols=shutil.get_terminal_size((100, 20)).columns,
        )  # fmt: skip

    def on_epoch(self, m: EpochMetrics) -> None:
        line = (
            f"epoch {m.epoch}/{self.epochs}  train loss {m.train_loss:.4f} acc {m.train_acc:.4f}  "
            f"test loss {m.test_loss:.4f} acc {m.test_acc:.4f}  "
        )
        if m.val_acc is not None:
            line += f"val loss {m.val_loss:.4f} acc {m.val_acc:.4f}  "
        line += f"lr {m.lr:.4g}  {m.epoch_seconds:.1f}s  {m.images_per_second:.0f} img/s"
        click.echo(line, err=True)
        self.events.send(
            Epoch(m.epoch, self.epochs, m.train_loss, m.test_acc, m.images_per_second, m.val_acc)
        )

    def on_end(self, summary: Summary, url: str | None) -> None:
        """One line once the run has finished: how it did, how long it took, where it is."""
        where = f"; {url}" if url else ""
        click.echo(f"run {summary.run_id} finished: {summary.name} in {duration(summary.seconds)} "
                   f"on {summary.facts['device_used']}; {summary.judged()}{where}")  # fmt: skip


def duration(seconds: float) -> str:
    """'45s', '3m12s', '1h02m'."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )
