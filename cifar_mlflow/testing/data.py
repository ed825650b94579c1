"""Tiny CIFAR-10-shaped data sets, in both layouts `load_cifar10` reads, that a model can learn
in a few steps (each class has its own colour)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

# Spelled out here rather than imported: the tests check the product's own list against it.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TINY_TRAIN_PER_CLASS = 8
TINY_TEST_PER_CLASS = 4


def tiny_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images whose colour depends on the class, so a model can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    base = np.array([[(c * 25) % 256, (c * 70) % 256, 255 - c * 25] for c in labels], np.float32)
    noise = rng.normal(0, 20, (len(labels), 32, 32, 3))
    images = np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_image_folder(root: Path, per_class: dict[str, int] | None = None) -> Path:
    per_class = per_class or {"train": TINY_TRAIN_PER_CLASS, "test": TINY_TEST_PER_CLASS}
    for seed, (split, n) in enumerate(per_class.items()):
        images, labels = tiny_images(n, seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def write_torchvision_files(root: Path) -> Path:
    """torchvision's cifar-10-batches-py layout: five train batches, a test batch, the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_images, train_labels = tiny_images(TINY_TRAIN_PER_CLASS, 0)
    test_images, test_labels = tiny_images(TINY_TEST_PER_CLASS, 1)
    train_parts = np.array_split(np.random.default_rng(0).permutation(len(train_labels)), 5)
    batches = {f"data_batch_{i + 1}": idx for i, idx in enumerate(train_parts)}
    for name, idx in batches.items():
        _pickle_batch(folder / name, train_images[idx], train_labels[idx])
    _pickle_batch(folder / "test_batch", test_images, test_labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f)
    return root


def _pickle_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({"data": flat, "labels": [int(x) for x in labels]}, f)
