"""What a person watching sees: on a terminal, tqdm bars (a training's epoch, a sweep's
configurations); on anything else, plain lines and the batches passed through untouched."""

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


def test_sweep_board_draws_a_bar_per_configuration_on_a_terminal():
    from cifar_mlflow.sweep.executors import Outcome
    from cifar_mlflow.sweep.progress import Board

    screen = Terminal()
    with Board(["resnet18-relu-sgd-s0", "resnet18-gelu-sgd-s0"], [4, 4], stream=screen) as board:
        board.started(0)
        board.epoch(0, 2, 4, 0.5)
        board.finished(1, Outcome("FAILED", reason="no class folders"))
    shown = screen.getvalue()
    assert "[1/2] resnet18-relu-sgd-s0" in shown and "2/4 epochs" in shown
    assert "running epoch 2/4  test acc 0.5000" in shown
    assert "[2/2] resnet18-gelu-sgd-s0" in shown and "failed: no class folders" in shown


def test_sweep_board_writes_a_line_per_change_elsewhere():
    from cifar_mlflow.sweep.progress import Board

    log = io.StringIO()
    with Board(["a", "bb"], [1, 1], stream=log) as board:
        board.started(1)
        board.epoch(1, 1, 1, 0.25)
    assert log.getvalue().splitlines() == [
        "[2/2] bb  running", "[2/2] bb  running epoch 1/1  test acc 0.2500"
    ]
