"""Loading CIFAR-10 from both layouts: same arrays, exact limits, stratified validation, the cache."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from cifar_mlflow.core.data import DataError, load_cifar10
from cifar_mlflow.core.errors import UserError

from .conftest import (
    CLASSES,
    TINY_TEST_PER_CLASS,
    TINY_TRAIN_PER_CLASS,
    tiny_images,
    write_image_folder,
)


def test_both_layouts_give_the_same_images(image_folder, torchvision_dir):
    folder, tv = load_cifar10(image_folder), load_cifar10(torchvision_dir)
    assert folder.classes == tv.classes == CLASSES
    assert folder.source.startswith("image-folder:") and tv.source.startswith("torchvision:")
    for a, b in ((folder.train, tv.train), (folder.test, tv.test)):
        assert a.images.dtype == np.uint8 and a.images.shape[1:] == (3, 32, 32)
        # The torchvision batches were written shuffled: compare as sets of (label, image).
        key = lambda s: sorted((int(l), i.tobytes()) for l, i in zip(s.labels, s.images))
        assert key(a) == key(b)
    expected, _ = tiny_images(TINY_TEST_PER_CLASS, 1)
    assert np.array_equal(folder.test.images, expected.transpose(0, 3, 1, 2))


def test_limit_keeps_the_first_images_of_each_class_and_exactly_n(image_folder):
    full = load_cifar10(image_folder)
    data = load_cifar10(image_folder, train_limit=23, test_limit=10)
    assert len(data.train) == 23 and len(data.test) == 10
    counts = np.bincount(data.train.labels, minlength=10)
    assert counts.tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    first_cat = full.train.images[full.train.labels == 3][:2]
    assert np.array_equal(data.train.images[data.train.labels == 3], first_cat)


def test_validation_split_is_stratified_seeded_and_disjoint(image_folder):
    a = load_cifar10(image_folder, val_size=20, seed=1)
    b = load_cifar10(image_folder, val_size=20, seed=1)
    c = load_cifar10(image_folder, val_size=20, seed=2)
    assert len(a.val) == 20 and len(a.train) == 10 * TINY_TRAIN_PER_CLASS - 20
    assert np.bincount(a.val.labels).tolist() == [2] * 10
    assert np.array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.images, c.val.images)
    train_keys = {i.tobytes() for i in a.train.images}
    assert not any(i.tobytes() in train_keys for i in a.val.images)


@pytest.mark.parametrize("val_size", [10 * TINY_TRAIN_PER_CLASS, 10 * TINY_TRAIN_PER_CLASS - 9])
def test_validation_split_that_leaves_less_than_one_image_per_class_is_refused(
    val_size, image_folder
):
    with pytest.raises(UserError, match=f"--val-size {val_size} .*fewer than one per class"):
        load_cifar10(image_folder, val_size=val_size)


def test_image_folder_is_decoded_once_then_read_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    first = load_cifar10(root)
    [cache] = (tmp_path / "cache").glob("*.npz")
    # Plant different pixels in the cache: a second load must return them, proving it read the
    # cache instead of decoding the files again.
    with np.load(cache) as stored:
        arrays = dict(stored)
    arrays["train_images"] = 255 - arrays["train_images"]
    np.savez(cache, **arrays)
    second = load_cifar10(root)
    assert np.array_equal(second.train.images, 255 - first.train.images)
    # Touching the data changes the fingerprint: the stale cache is not used.
    next((root / "train" / "cat").iterdir()).unlink()
    assert len(load_cifar10(root).train) == len(first.train) - 1


def test_cache_keeps_one_file_per_data_source(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    other = write_image_folder(tmp_path / "other" / "data", {"train": 2, "test": 1})
    load_cifar10(root)
    load_cifar10(other)  # same folder name, another source: its cache is its own
    [old, kept] = sorted((tmp_path / "cache").glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    next((root / "train" / "cat").iterdir()).unlink()  # a new version of the first source
    load_cifar10(root)
    [new] = set((tmp_path / "cache").glob("*.npz")) - {kept}
    assert new != old and not old.exists() and kept.exists()


def test_cache_that_cannot_be_written_is_a_warning_and_the_data_still_loads(tmp_path, monkeypatch):
    """A folder below a regular file: no one can write there, root included (chmod would not
    stop root)."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE", str(tmp_path / "a-file" / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    with pytest.warns(UserWarning, match="cannot write the decoded-image cache .*training without"):
        data = load_cifar10(root)
    assert len(data.train) == 20 and np.bincount(data.train.labels).tolist() == [2] * 10


def test_directory_with_neither_layout_names_the_expected_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("not CIFAR-10")
    with pytest.raises(DataError, match="holds no CIFAR-10.*train/<class>"):
        load_cifar10(tmp_path)


def _network_reaches(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(
    _network_reaches("www.cs.toronto.edu"), reason="online: would download CIFAR-10"
)
def test_missing_directory_offline_says_how_to_point_at_a_local_copy(tmp_path):
    with pytest.raises(DataError, match="downloading it failed.*--data-dir"):
        load_cifar10(tmp_path / "cifar")
