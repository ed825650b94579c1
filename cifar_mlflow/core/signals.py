"""SIGINT and SIGTERM as an exception, so that whatever a command has open (an MLflow run, a
checkpoint being written) is closed as it unwinds, and the process exits promptly.

`StopOnSignal` turns both signals into `Interrupted` (a KeyboardInterrupt). Inside `steps()` the
signal is held until the current step is done (the loop looks at a flag between steps: no
device sync, no cost), so a training step is never cut in half; elsewhere the exception is raised
at once, and a second signal always stops at once. Nesting is allowed: the inner one holds the
handlers until it exits, then the outer one's are back.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; whoever closes something on the way out may add a note
    (`add_note`) saying what became of it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


class StopOnSignal:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._received: int | None = None
        self._in_steps = False
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        repeated, self._received = self._received is not None, signum
        if repeated or not self._in_steps:
            raise Interrupted(signum)

    def steps(self, batches: Iterable) -> Iterator:
        """Yield the batches; a signal that arrives during a step stops the loop after it."""
        self._in_steps = True
        try:
            for batch in batches:
                yield batch  # the training step runs here
                if self._received is not None:
                    raise Interrupted(self._received)
        finally:
            self._in_steps = False
