"""Damaged data, made for real by cutting and overwriting files: an error that names the file and
what was expected, and no cache left behind that would poison the next run. Data that is not
CIFAR-10 (class folders or label names extra, missing, misspelt, renamed), in both layouts:
refused by name, or labelled in CIFAR-10's order. (Missing folders and wrong layouts:
tests/test_data.py and tests/test_cli_errors.py.)"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cifar_mlflow.cli import cli
from cifar_mlflow.core.data import DataError, load_cifar10

from .conftest import CLASSES, tiny_train_args, write_image_folder, write_torchvision_files


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


# --- data that is not CIFAR-10 ---------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("extra", "extra train/unicorn"),  # train/ is checked first
        ("missing", "missing train/frog"),
        ("misspelt", "train/aeroplane misspelt? (CIFAR-10 has airplane)"),
        ("same-class", "train/Cat and train/cat name the same class"),
    ],
)
def test_image_folder_that_is_not_cifar10_is_refused_by_name(damage, expected, folder):
    if damage == "extra":
        for split in ("train", "test"):
            shutil.copytree(folder / split / "cat", folder / split / "unicorn")
    elif damage == "missing":
        shutil.rmtree(folder / "train" / "frog")
    elif damage == "misspelt":
        (folder / "train" / "airplane").rename(folder / "train" / "aeroplane")
    else:
        shutil.copytree(folder / "train" / "cat", folder / "train" / "Cat")
    with pytest.raises(DataError, match=f"^{folder / 'train'} does not hold CIFAR-10's ten") as e:
        load_cifar10(folder)
    assert f": {expected} (the classes are airplane, automobile," in str(e.value)


def test_class_folders_in_any_case_and_order_get_cifar10_labels(folder, tmp_path):
    expected = load_cifar10(folder)
    renamed = tmp_path / "renamed"
    for split in ("train", "test"):
        # Upper-case names sort differently ("Airplane" < "BIRD" < "automobile"): the labels
        # must still follow CIFAR-10's order, not the folders'.
        for i, name in enumerate(CLASSES):
            shown = name.upper() if i % 2 else name.capitalize()
            shutil.copytree(folder / split / name, renamed / split / shown)
    data = load_cifar10(renamed)
    assert data.classes == CLASSES
    for got, want in ((data.train, expected.train), (data.test, expected.test)):
        assert np.array_equal(got.labels, want.labels)
        assert np.array_equal(got.images, want.images)


def rewrite_torchvision(root, label_names: list[str], relabel) -> None:
    """Rewrite the batches' labels with `relabel` and the meta file with `label_names`."""
    folder = root / "cifar-10-batches-py"
    for path in folder.glob("*_batch*"):
        entry = pickle.loads(path.read_bytes())
        entry["labels"] = [relabel(label) for label in entry["labels"]]
        path.write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": label_names}))


def test_torchvision_labels_in_another_order_are_mapped_to_cifar10s(tmp_path, torchvision_dir):
    root = write_torchvision_files(tmp_path / "tv")
    reversed_names = [name.upper() for name in reversed(CLASSES)]
    rewrite_torchvision(root, reversed_names, lambda label: 9 - label)
    data, expected = load_cifar10(root), load_cifar10(torchvision_dir)
    assert data.classes == CLASSES
    assert np.array_equal(data.train.labels, expected.train.labels)
    assert np.array_equal(data.test.images, expected.test.images)


@pytest.mark.parametrize(
    "names, expected",
    [
        ([*CLASSES, "unicorn"], "extra unicorn"),
        ([*CLASSES[:9], "truk"], "truk misspelt? (CIFAR-10 has truck)"),
        (list(CLASSES[:9]), "missing truck"),
    ],
)
def test_torchvision_meta_that_is_not_cifar10_is_refused_by_name(names, expected, tmp_path):
    root = write_torchvision_files(tmp_path / "tv")
    rewrite_torchvision(root, names, lambda label: min(label, len(names) - 1))
    meta = root / "cifar-10-batches-py" / "batches.meta"
    with pytest.raises(DataError, match=f"{meta} does not hold CIFAR-10's ten classes") as refused:
        load_cifar10(root)
    assert expected in str(refused.value)


def test_extra_class_through_the_cli_is_one_line_and_opens_no_run(folder, cache, tracking):
    import mlflow

    for split in ("train", "test"):
        shutil.copytree(folder / split / "cat", folder / split / "lion")
    result = CliRunner().invoke(cli, tiny_train_args(folder, tracking))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "extra train/lion" in result.stderr
    assert mlflow.get_experiment_by_name(tracking) is None
