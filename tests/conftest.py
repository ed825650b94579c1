"""Shared fixtures: a real `mlflow server` on sqlite (and one on PostgreSQL for the tests that
run on both stores), and tiny CIFAR-10-shaped data sets in both layouts (made by
cifar_mlflow.testing, which the benchmarks use too)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cifar_mlflow.testing.data import (  # noqa: F401 (re-exported for the tests)
    CLASSES,
    TINY_TEST_PER_CLASS,
    TINY_TRAIN_PER_CLASS,
    tiny_images,
    write_image_folder,
    write_torchvision_files,
)
from cifar_mlflow.testing.postgres import PostgresMissing, PostgresServer
from cifar_mlflow.testing.server import POOL_OF_40, MlflowServer, free_port  # noqa: F401

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (testing/postgres.py). Where PostgreSQL or its Python driver is
    missing, the tests on it are skipped; CI installs both (.ci/run), so there they fail."""
    try:
        if importlib.util.find_spec("psycopg") is None:
            raise PostgresMissing('no psycopg, the PostgreSQL driver: pip install -e ".[test]"')
        database = PostgresServer()
    except PostgresMissing as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL store: {e}")
        pytest.skip(f"PostgreSQL store: {e}")
    try:
        yield database
    finally:
        database.stop()


@pytest.fixture(scope="session")
def postgres_mlflow_server(postgres_server, tmp_path_factory):
    """`mlflow server` on PostgreSQL, as README's team setup starts it."""
    env = {**postgres_server.env, **POOL_OF_40}
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-postgres"), store=postgres_server.uri,
                          env=env)  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


STORE_SERVERS = {"sqlite": "mlflow_server", "postgresql": "postgres_mlflow_server"}
# A test (and its module's fixtures that take `tracking_server`) run once per store. The sqlite
# case is the param None, which is also what a test without the mark gets: the two share their
# module's fixtures.
on_both_stores = pytest.mark.parametrize(
    "tracking_server", [pytest.param(None, id="sqlite"), "postgresql"], indirect=True
)


@pytest.fixture(scope="module")
def tracking_server(request):
    """The server `tracking` points at: the sqlite one unless the test is `on_both_stores`."""
    return request.getfixturevalue(STORE_SERVERS[getattr(request, "param", None) or "sqlite"])


@contextlib.contextmanager
def tracking_on(uri: str) -> Iterator[pytest.MonkeyPatch]:
    """MLflow in this process pointed at `uri`, with no run or experiment inherited from the
    environment or an earlier test. What the block sets is undone after it (mlflow.set_experiment()
    exports MLFLOW_EXPERIMENT_ID), so nothing leaks into later tests or into the `mlflow run`
    subprocesses some tests start."""
    import mlflow

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.setenv(name, "")  # recorded, so that leaving the block unsets it again
            env.delenv(name)
        mlflow.set_tracking_uri(uri)
        yield env


@pytest.fixture
def tracking(tracking_server):
    """Point this test at the real server, with an experiment of its own."""
    import mlflow

    with tracking_on(tracking_server.uri):
        yield f"test-{uuid.uuid4().hex[:8]}"
        while mlflow.active_run():
            mlflow.end_run()


def tiny_train_args(data_dir: Path, experiment: str, *extra: str) -> list[str]:
    """CLI arguments for a run that takes a few seconds on a CPU."""
    return [
        "train", "--data-dir", str(data_dir), "--experiment", experiment, "--epochs", "2",
        "--batch-size", "16", "--device", "cpu", "--no-system-metrics", *extra,
    ]  # fmt: skip
