"""What a person watching a sweep sees: a live line per configuration, then a summary table.

On a terminal the lines are redrawn in place; elsewhere (a log file, CI) each change is one new
line, so the log reads as a history.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import click

from .sweep_executors import Outcome


@dataclass(frozen=True)
class Row:
    """One configuration of the sweep as the summary shows it."""

    name: str
    status: str  # FINISHED, FAILED, KILLED, or "not run"
    best_test_acc: float | None
    seconds: float | None  # None: not run by this sweep invocation
    run_id: str
    reason: str = ""
    earlier: bool = False  # finished by an earlier invocation of the sweep


class Board:
    def __init__(self, names: Sequence[str], stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        width = max(map(len, names), default=0)
        count = len(names)
        self.labels = [f"[{i + 1}/{count}] {name:<{width}}" for i, name in enumerate(names)]
        self.states = ["waiting"] * count
        self.lock = threading.Lock()
        self.drawn = 0

    def show(self) -> None:
        with self.lock:
            if self.live:
                self._redraw()

    def started(self, index: int) -> None:
        self._set(index, "running")

    def epoch(self, index: int, epoch: int, epochs: int, test_acc: float) -> None:
        self._set(index, f"running epoch {epoch}/{epochs}  test acc {test_acc:.4f}")

    def finished(self, index: int, outcome: Outcome) -> None:
        self._set(index, describe(outcome))

    def _set(self, index: int, text: str) -> None:
        with self.lock:
            self.states[index] = text
            if self.live:
                self._redraw()
            else:
                click.echo(f"{self.labels[index]}  {text}", file=self.stream)

    def _redraw(self) -> None:
        up = f"\x1b[{self.drawn}F" if self.drawn else ""  # back to the first line drawn
        lines = [f"\x1b[2K{label}  {state}" for label, state in zip(self.labels, self.states)]
        self.stream.write(up + "\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)


def describe(outcome: Outcome) -> str:
    took = f" in {duration(outcome.seconds)}" if outcome.seconds else ""
    if outcome.status == "FINISHED":
        acc = (
            f": best test acc {outcome.best_test_acc:.4f}"
            if outcome.best_test_acc is not None
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


def summary_table(rows: Sequence[Row]) -> str:
    header = ("configuration", "status", "best test acc", "time", "run")
    cells = [header] + [
        (
            r.name,
            f"{r.status} (earlier)" if r.earlier else r.status,
            f"{r.best_test_acc:.4f}" if r.best_test_acc is not None else "-",
            duration(r.seconds) if r.seconds else "-",
            r.run_id,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failures = [f"  {r.name}: {r.reason}" for r in rows if r.status not in ("FINISHED", "not run")]
    return "\n".join(lines + (["failures:", *failures] if failures else []))
