"""Damaged data, made for real by cutting and overwriting files: an error that names the file and
what was expected, and no cache left behind that would poison the next run. (Missing folders and
wrong layouts: tests/test_data.py and tests/test_cli_errors.py.)"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cifar_mlflow.cli import cli
from cifar_mlflow.core.data import DataError, load_cifar10

from .conftest import tiny_train_args, write_image_folder, write_torchvision_files


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE", str(folder))
    return folder


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "images", {"train": 2, "test": 1})


def cached_files(cache) -> list[str]:
    return sorted(p.name for p in cache.rglob("*")) if cache.exists() else []


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_image_is_named_and_nothing_is_cached(damage, folder, cache):
    image = folder / "train" / "deer" / "0009.png"
    if damage == "garbage":
        image.write_bytes(b"this is not a PNG file" * 10)
    else:
        truncate(image)
    with pytest.raises(DataError, match=f"cannot decode image {image}.*remove or replace"):
        load_cifar10(folder)
    assert cached_files(cache) == []

    image.unlink()  # the fix the message suggests works at once, nothing stale in the way
    assert len(load_cifar10(folder).train) == 19


def test_damaged_image_through_the_cli_is_one_line_and_opens_no_run(folder, cache, tracking):
    import mlflow

    image = folder / "test" / "ship" / "0008.png"
    truncate(image, 0.3)
    result = CliRunner().invoke(cli, tiny_train_args(folder, tracking))
    assert result.exit_code == 1
    assert result.output.strip() == result.output.strip().splitlines()[0]
    assert str(image) in result.output and result.output.startswith("error: cannot decode image")
    assert mlflow.get_experiment_by_name(tracking) is None  # not even the experiment was created
    assert cached_files(cache) == []


@pytest.mark.parametrize("damage", ["truncated", "wrong-shape", "not-a-batch"])
def test_damaged_torchvision_batch_file_is_named(damage, tmp_path):
    root = write_torchvision_files(tmp_path / "tv")
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    if damage == "truncated":
        truncate(batch)
    elif damage == "wrong-shape":
        batch.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}))
    else:
        batch.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=f"damaged CIFAR-10 (batch )?file {batch}"):
        load_cifar10(root)


def test_missing_torchvision_batch_file_is_named_with_the_expected_layout(tmp_path):
    root = write_torchvision_files(tmp_path / "tv")
    (root / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(
        DataError, match="missing CIFAR-10 batch file .*data_batch_5: expected cifar-10-batches-py/"
    ):
        load_cifar10(root)


def test_damaged_cache_is_rebuilt_not_trusted(folder, cache):
    first = load_cifar10(folder)
    [cached] = cache.glob("*.npz")
    size = cached.stat().st_size
    truncate(cached)  # a disk error, or a copy cut short
    again = load_cifar10(folder)
    assert np.array_equal(again.train.images, first.train.images)
    assert np.array_equal(again.train.labels, first.train.labels)
    assert cached.stat().st_size == size  # written again, whole


def test_leftover_of_a_killed_cache_writer_is_never_read(folder, cache):
    """A SIGKILL during the cache write leaves only a `.tmp` file beside where the cache goes
    (tests/test_resume.py kills a real writer)."""
    first = load_cifar10(folder)
    [cached] = cache.glob("*.npz")
    leftover = cached.with_name(f".{cached.name}.k1ll3d.tmp")
    shutil.move(cached, leftover)
    truncate(leftover)
    second = load_cifar10(folder)
    assert np.array_equal(second.test.images, first.test.images)
    assert cached.exists()
