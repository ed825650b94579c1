"""What a person watching sees: on a terminal, tqdm bars (a training's epoch, a sweep's
configurations); on anything else, plain lines and the batches passed through untouched."""

from __future__ import annotations

import io
import json
import os

from cifar_mlflow.core.engine import EpochMetrics
from cifar_mlflow.train.events import EVENTS_FD, Epoch, EventWriter, Started, read_events
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
        board.progress(0, Epoch(2, 4, train_loss=1.5, test_acc=0.5, images_per_second=99.6))
        board.finished(1, Outcome("FAILED", reason="no class folders"))
    shown = screen.getvalue()
    assert "[1/2] resnet18-relu-sgd-s0" in shown and "2/4 epochs" in shown
    assert "running epoch 2/4  test acc 0.5000  100 img/s" in shown
    assert "[2/2] resnet18-gelu-sgd-s0" in shown and "failed: no class folders" in shown


def test_sweep_board_writes_a_line_per_change_elsewhere():
    from cifar_mlflow.sweep.progress import Board

    log = io.StringIO()
    with Board(["a", "bb"], [1, 1], stream=log) as board:
        board.started(1)
        board.progress(1, Started("abc123", 1))
        board.progress(1, Epoch(1, 1, 2.0, test_acc=0.25, images_per_second=10, val_acc=0.5))
    assert log.getvalue().splitlines() == [
        "[2/2] bb  running",
        "[2/2] bb  running: run abc123",
        "[2/2] bb  running epoch 1/1  val acc 0.5000  test acc 0.2500  10 img/s",
    ]


def test_the_reporter_sends_its_run_and_each_epoch_as_events_down_a_pipe():
    read_end, write_end = os.pipe()
    with open(write_end, "w", buffering=1) as stream:
        reporter = EpochReporter(epochs=2, stream=io.StringIO(), events=EventWriter(stream))
        facts = {"model_params": 1, "device_used": "cpu", "precision_used": "fp32",
                 "train_images": 20, "test_images": 10}  # fmt: skip
        reporter.on_start("run1", facts)
        reporter.on_epoch(EpochMetrics(1, 2.3, 0.1, 2.4, 0.125, 0.01, 1.0, 50.0, 2.2, 0.2))
        stream.write("not json\n" + json.dumps({"event": "from a newer writer"}) + "\n")
    with open(read_end) as events:
        assert list(read_events(events)) == [
            Started("run1", 2),
            Epoch(1, 2, train_loss=2.3, test_acc=0.125, images_per_second=50.0, val_acc=0.2),
        ]


def test_a_reporter_whose_reader_is_gone_keeps_training():
    read_end, write_end = os.pipe()
    os.close(read_end)
    # Opened as EventWriter.from_environment opens it; the writer closes it on the broken pipe.
    stream = open(write_end, "w", buffering=1)  # noqa: SIM115
    reporter = EpochReporter(epochs=1, stream=io.StringIO(), events=EventWriter(stream))
    for _ in range(2):  # the first write meets the broken pipe; the second is not tried
        reporter.on_epoch(EpochMetrics(1, 2.3, 0.1, 2.4, 0.125, 0.01, 1.0, 50.0))
    assert reporter.events.stream is None and stream.closed


def test_the_reporter_writes_only_to_a_pipe_named_in_its_environment(monkeypatch, tmp_path):
    read_end, write_end = os.pipe()
    monkeypatch.setenv(EVENTS_FD, str(write_end))
    writer = EventWriter.from_environment()
    assert EVENTS_FD not in os.environ  # processes it starts do not inherit the name
    writer.send(Started("run1", 1))
    writer.stream.close()
    with open(read_end) as events:
        assert list(read_events(events)) == [Started("run1", 1)]
    with open(tmp_path / "some file", "w") as other:  # a number that names no pipe
        monkeypatch.setenv(EVENTS_FD, str(other.fileno()))
        assert EventWriter.from_environment().stream is None
