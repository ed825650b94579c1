"""Shared fixtures: a real `mlflow server`, and tiny CIFAR-10-shaped data sets in both layouts."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TINY_TRAIN_PER_CLASS = 8
TINY_TEST_PER_CLASS = 4
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("image-folder"))


@pytest.fixture(scope="session")
def torchvision_dir(tmp_path_factory) -> Path:
    return write_torchvision_files(tmp_path_factory.mktemp("torchvision"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Decoded-image caches go to a temporary folder, never the user's ~/.cache."""
    os.environ["CIFAR_MLFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))


class MlflowServer:
    def __init__(self, root: Path, extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log = open(root / "server.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends gunicorn/uvicorn workers too
        )  # fmt: skip

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not ready in {timeout}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    """Point this test at the real server, with an experiment of its own."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    # mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID: keep it from leaking between tests
    # (and into the `mlflow run` subprocesses some tests start).
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    mlflow.set_tracking_uri(mlflow_server.uri)
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    yield experiment
    while mlflow.active_run():
        mlflow.end_run()
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def tiny_train_args(data_dir: Path, experiment: str, *extra: str) -> list[str]:
    """CLI arguments for a run that takes a few seconds on a CPU."""
    return [
        "train", "--data-dir", str(data_dir), "--experiment", experiment, "--epochs", "2",
        "--batch-size", "16", "--device", "cpu", "--no-system-metrics", *extra,
    ]  # fmt: skip
