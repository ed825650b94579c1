"""When checkpoints are written (`--checkpoint-every`), the writer's thread, and which CUDA
generator state a checkpoint restores: the parts of core/checkpoint.py no server is needed for.
The whole path, with real processes and signals: tests/test_resume.py, tests/test_signals.py."""

from __future__ import annotations

import threading

import pytest
import torch

from cifar_mlflow.core import checkpoint
from cifar_mlflow.core.config import CheckpointInterval, TrainConfig, checkpoint_interval
from cifar_mlflow.core.errors import UserError


@pytest.mark.parametrize("text, interval", [
    ("1", CheckpointInterval(epochs=1)), ("12", CheckpointInterval(epochs=12)),
    ("30s", CheckpointInterval(seconds=30)), ("5m", CheckpointInterval(seconds=300)),
    ("1.5h", CheckpointInterval(seconds=5400)), (" 2M ", CheckpointInterval(seconds=120)),
])  # fmt: skip
def test_checkpoint_every_reads_epochs_or_a_time(text, interval):
    assert checkpoint_interval(text) == interval


@pytest.mark.parametrize("text", ["0", "-1", "0s", "5", "m", "5d", "nanm", "infs", "1e999h", ""])
def test_checkpoint_every_refuses_what_is_neither(text):
    if text == "5":  # a bare number is epochs
        assert checkpoint_interval(text) == CheckpointInterval(epochs=5)
        return
    with pytest.raises(UserError, match="neither a number of epochs"):
        checkpoint_interval(text)
    with pytest.raises(UserError):  # a grid file or a run read back goes through the same rule
        TrainConfig(checkpoint_every=text)


def test_time_policy_saves_once_the_interval_has_passed():
    now = [0.0]
    policy = checkpoint.Policy("5m", clock=lambda: now[0])
    due = []
    for epoch in range(1, 41):
        now[0] += 90  # an epoch of 90 s: a checkpoint every fourth epoch (after 360 s)
        if policy.due(epoch):
            due.append(epoch)
            policy.saved()
    assert due == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]


def test_epoch_policy_saves_every_nth_epoch():
    policy = checkpoint.Policy("3", clock=lambda: 0.0)
    assert [e for e in range(1, 10) if policy.due(e)] == [3, 6, 9]


def test_writer_writes_on_its_own_thread_and_raises_its_error_in_the_callers(tmp_path):
    seen = []
    def written(state, path):
        seen.append((state["epoch"], path, threading.current_thread().name))

    with checkpoint.Writer(written) as w:
        w.write({"epoch": 3, "weights": torch.arange(4)}, tmp_path / "a" / "checkpoint.pt")
        w.wait()
        (tmp_path / "file").write_text("a file, not a folder")
        w.write({"epoch": 4}, tmp_path / "file" / "checkpoint.pt")
        with pytest.raises(OSError):
            w.wait()
    assert seen == [(3, tmp_path / "a" / "checkpoint.pt", "checkpoint-writer")]
    saved = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert torch.equal(saved["weights"], torch.arange(4))


def test_the_training_devices_cuda_state_is_restored_whatever_the_gpus_visible():
    """A checkpoint holds the state of the device it trained on; one from before held every
    visible GPU's by position, and the first is the training device's."""
    mine, other = torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)
    assert checkpoint.training_device_cuda_state({"cuda_device": mine}) is mine
    eight_gpus = [mine, *[other] * 7]
    assert checkpoint.training_device_cuda_state({"cuda": eight_gpus}) is mine
    assert checkpoint.training_device_cuda_state({"torch": other}) is None


def test_a_state_is_copied_into_an_earlier_ones_memory_where_it_fits():
    """The copy off the device reuses a written state's tensors: same values as a fresh copy,
    no new memory where shapes match, and none of the model's own tensors shared."""
    from bench.bench_checkpoint import trained_state

    trainer, history, best = trained_state(images=20)
    earlier = checkpoint.capture(trainer, history, best)
    weight = earlier["model"]["stem.0.weight"]
    own = trainer.model.state_dict()["stem.0.weight"]
    with torch.no_grad():
        own.add_(1)
    again = checkpoint.capture(trainer, history, best, reuse=earlier)
    assert again["model"]["stem.0.weight"] is weight
    fresh = checkpoint.capture(trainer, history, best)
    assert all(torch.equal(again["model"][k], v) for k, v in fresh["model"].items())
    assert torch.equal(weight, own)
    assert weight.data_ptr() != own.data_ptr()
