"""A tqdm bar per epoch on a terminal; on anything else, the batches pass through untouched."""

from __future__ import annotations

import io

from cifar_mlflow.train.progress import EpochReporter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_bar_per_epoch():
    screen = Terminal()
    reporter = EpochReporter(epochs=3, stream=screen)
    assert list(reporter.wrap(range(4), epoch=2)) == [0, 1, 2, 3]
    assert "epoch 2/3:" in screen.getvalue() and "0/4 [" in screen.getvalue()


def test_log_file_gets_no_bar():
    log = io.StringIO()
    batches = range(4)
    assert EpochReporter(epochs=3, stream=log).wrap(batches, epoch=1) is batches
    assert log.getvalue() == ""
