"""What a person watching a sweep sees: a live line per configuration, then a summary table.

On a terminal the lines are redrawn in place; elsewhere (a log file, CI) each change is one new
line, so the log reads as a history. What a training reports comes from its structured events
(train/events.py), not from its text output.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import click
from tqdm import tqdm

from ..train.events import Event, Started
from .executors import Outcome


@dataclass(frozen=True)
class ConfigurationResult:
    """One configuration of the sweep as the summary shows it."""

    name: str
    status: str  # FINISHED, FAILED, KILLED, or "not run"
    test_acc: float | None
    seconds: float | None  # None: not run by this sweep invocation
    run_id: str
    reason: str = ""
    earlier: bool = False  # finished by an earlier invocation of the sweep


class Board:
    """A line per configuration. On a terminal, tqdm's bars at fixed positions (tqdm moves the
    cursor and serialises the writers); elsewhere each change is one new line."""

    def __init__(self, names: Sequence[str], epochs: Sequence[int], stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        width = max(map(len, names), default=0)
        count = len(names)
        self.labels = [f"[{i + 1}/{count}] {name:<{width}}" for i, name in enumerate(names)]
        self.epochs = list(epochs)
        self.bars: list[tqdm] = []
        self.lock = threading.Lock()

    def __enter__(self) -> Board:  # noqa: PYI034 (typing.Self needs Python 3.11; 3.10 is supported)
        if self.live:
            self.bars = [
                tqdm(total=total, desc=label, position=i, file=self.stream, leave=True,
                     bar_format="{desc}  {bar:20} {n}/{total} epochs  {postfix}",
                     postfix="waiting", dynamic_ncols=True)
                for i, (label, total) in enumerate(zip(self.labels, self.epochs))
            ]  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        for bar in self.bars:
            bar.close()

    def started(self, index: int) -> None:
        self._set(index, "running")

    def progress(self, index: int, event: Event) -> None:
        """The training's own events (train/events.py): its run, then each epoch."""
        if isinstance(event, Started):
            self._set(index, f"running: run {event.run_id}")
            return
        held_out = f"val acc {event.val_acc:.4f}  " if event.val_acc is not None else ""
        self._set(
            index,
            f"running epoch {event.epoch}/{event.epochs}  {held_out}test acc "
            f"{event.test_acc:.4f}  {event.images_per_second:.0f} img/s",
            event.epoch,
        )

    def finished(self, index: int, outcome: Outcome) -> None:
        self._set(index, describe(outcome))

    def _set(self, index: int, text: str, epoch: int | None = None) -> None:
        with self.lock:
            if not self.live:
                click.echo(f"{self.labels[index]}  {text}", file=self.stream)
                return
            bar = self.bars[index]
            if epoch is not None:
                bar.n = epoch
            bar.set_postfix_str(text)


def describe(outcome: Outcome) -> str:
    took = f" in {duration(outcome.seconds)}" if outcome.seconds else ""
    if outcome.status == "FINISHED":
        acc = (
            f": test acc {outcome.test_acc:.4f} (at its best-validation epoch, else final)"
            if outcome.test_acc is not None
            else ""
        )
        return f"finished{took}{acc}"
    return f"{outcome.status.lower()}{took}: {outcome.reason}"


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )


def results_table(rows: Sequence[ConfigurationResult]) -> str:
    header = ("configuration", "status", "test acc*", "time", "run")
    cells = [header] + [
        (
            r.name,
            f"{r.status} (earlier)" if r.earlier else r.status,
            f"{r.test_acc:.4f}" if r.test_acc is not None else "-",
            duration(r.seconds) if r.seconds else "-",
            r.run_id,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failures = [f"  {r.name}: {r.reason}" for r in rows if r.status not in ("FINISHED", "not run")]
    note = "* test accuracy at the run's best-validation epoch (its last epoch without validation)"
    return "\n".join(lines + [note] + (["failures:", *failures] if failures else []))
