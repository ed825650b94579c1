"""Real servers on 127.0.0.1 and a free port: `mlflow server` with a sqlite store (or another
database: testing/postgres.py), or any other that answers /health (a test's `mlflow models serve`). Each runs in its own process group (they
spawn workers) and is stopped as a whole."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

# `mlflow server` starts in 20-50 s here, in minutes on a loaded shared machine (measured: 80 s).
START_SECONDS = 300
# A database connection for each of a server worker's request threads (anyio's 40), so that no
# request waits for one: MLflow answers a wait over 30 s with a 400 (docs/scale.md).
POOL_OF_40 = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "10", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "30"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A server process started at once; `command()` says which. Its output goes to
    root/server.log."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.env = env  # None: this process's environment
        self.process: subprocess.Popen | None = None
        self.start()

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server, or start it again: same port, same files."""
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {(self.root / 'server.log').read_text()}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready in {timeout}s: {self.command()}")

    def stop(self) -> None:
        """End the whole process group."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class MlflowServer(LocalServer):
    """`mlflow server` over root/mlflow.db (or `store`, a database URI; `env` with its password)
    and root/artifacts, one worker, without MLflow's job runner (GenAI jobs: measured, eight
    more processes and ~2 GB per server)."""

    def __init__(self, root: Path, extra_args: tuple[str, ...] = (), store: str | None = None,
                 env: dict[str, str] | None = None):  # fmt: skip
        self.extra_args = extra_args
        self.store = store or f"sqlite:///{root / 'mlflow.db'}"
        super().__init__(root, {**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.store,
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", *self.extra_args,
        ]  # fmt: skip
