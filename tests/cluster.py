"""A real Ray cluster on this machine: a head and worker nodes, each a `ray start` process of its
own (its own raylet, object store and resources) on an address of its own in the loopback range,
with token authentication, as README's team setup starts them.

README's commands (HEAD_COMMAND, WORKER_COMMAND) get the flags that let several nodes share one
machine (SAME_MACHINE: addresses, free ports, a temporary folder, --block to hold each node as
a process that stopping ends). A worker's own Python finds a `cifar_mlflow` that refuses to be
imported (`decoy`), so a trial can only run the code its driver ships through Ray's runtime
environment."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from cifar_mlflow.testing.server import free_port

HEAD_COMMAND = "ray start --head --port {port} --num-cpus 0"
WORKER_COMMAND = "ray start --address {head} --num-cpus 1"
START_SECONDS = 120
DECOY = 'raise ImportError("this node\'s own cifar_mlflow: a trial runs the driver\'s, from Ray")\n'


class RayCluster:
    """A head that runs no trial (no CPU for one) and `workers` worker nodes of one CPU each, so
    two trials at once run on two different nodes."""

    def __init__(self, root: Path, workers: int):
        self.root = root
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    # The nodes share this machine with everything else, whose memory Ray's
                    # memory monitor would count as theirs and kill trials for.
                    "RAY_memory_monitor_refresh_ms": "0"}  # fmt: skip
        self.env.pop("RAY_ADDRESS", None)
        self.port = free_port()
        self.address = f"127.0.0.2:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.commands: list[list[str]] = []
        try:
            self._start("head", HEAD_COMMAND.format(port=self.port), "127.0.0.2",
                        "--dashboard-port", str(free_port()))  # fmt: skip
            decoy = root / "decoy"
            (decoy / "cifar_mlflow").mkdir(parents=True)
            (decoy / "cifar_mlflow" / "__init__.py").write_text(DECOY)
            path = os.pathsep.join(p for p in (str(decoy), os.environ.get("PYTHONPATH")) if p)
            for i in range(workers):
                self._start(f"worker-{i}", WORKER_COMMAND.format(head=self.address),
                            f"127.0.0.{3 + i}", env={"PYTHONPATH": path})  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, command: str, ip: str, *extra: str, env=None) -> None:
        """Start one node and wait until it has joined (one at a time: nodes started together
        time out on a loaded machine)."""
        ray, *args = shlex.split(command)  # `ray` of this interpreter's environment
        argv = [str(Path(sys.executable).with_name(ray)), *args, "--block", "--node-ip-address", ip,
                "--temp-dir", str(self.root), "--dashboard-agent-listen-port", str(free_port()),
                "--object-store-memory", str(80 * 1024**2), "--disable-usage-stats",
                *extra]  # fmt: skip
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            self.nodes.append(subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                start_new_session=True,
            ))  # fmt: skip
        self.commands.append(argv)
        deadline = time.monotonic() + START_SECONDS
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if self.nodes[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray node {name} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Each node's whole process group (every Ray process of a node is in its group): a
        SIGTERM, then a SIGKILL to what is left. measured: a node takes ~33 s to end on SIGTERM
        alone, and a test cluster holds nothing worth a graceful stop."""
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for node in reversed(self.nodes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
