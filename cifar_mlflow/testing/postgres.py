"""A real PostgreSQL server on 127.0.0.1 and a free port, for an `mlflow server` to store its runs
in: Debian's `postgresql` package (its binaries in /usr/lib/postgresql/<version>/bin), a database
cluster made by initdb in a temporary folder, a database `mlflow` owned by a user `mlflow`.

PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as the `postgres` system user
the package creates, in a folder that user owns; otherwise as the current user. The database is
set up as README's team setup says (createuser, createdb, a password); connections over TCP need
the password (PGPASSWORD in `env`), those on the server's own socket (setting up) do not."""

from __future__ import annotations

import getpass
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from .server import free_port

BINARIES = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # the system user Debian's package creates, and the superuser's name
DATABASE = USER = "mlflow"  # as README's team setup names them
START_SECONDS = 60


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries, or no user to run them as."""


def binaries() -> Path:
    """The bin folder of the newest PostgreSQL installed."""
    found = [p for p in BINARIES.glob("*/bin") if (p / "postgres").exists()]
    if not found:
        raise PostgresMissing(
            f"no PostgreSQL server in {BINARIES}/<version>/bin: apt-get install postgresql"
        )
    return max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])


class PostgresServer:
    """initdb, pg_ctl start, createuser, createdb; `stop` ends the server and removes its folder.
    `durable=False` turns off fsync (tests: nothing is kept); a benchmark keeps it on."""

    def __init__(self, durable: bool = False):
        self.bin = binaries()
        self.as_user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="cifar-mlflow-pg-"))
        self.port = free_port()
        self.uri = f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"
        self.env = {**os.environ, "PGPASSWORD": secrets.token_hex(16)}  # for an mlflow server
        self.commands: list[list[str]] = []  # the set-up commands, as run
        self.started = False
        try:
            if self.as_user:
                shutil.chown(self.root, self.as_user)
            self._server("initdb", "-D", str(self.root / "data"), "-U", SERVER_USER,
                         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                         "--no-sync")  # fmt: skip
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            options += "" if durable else " -c fsync=off -c synchronous_commit=off"
            self._server("pg_ctl", "-D", str(self.root / "data"), "-o", options,
                         "-l", str(self.root / "server.log"), "-w", "-t", str(START_SECONDS),
                         "start")  # fmt: skip
            self.started = True
            self._client("createuser", USER)
            self._client("createdb", "--owner", USER, DATABASE)
            password = self.env["PGPASSWORD"]
            self._client("psql", "--command", f"ALTER USER {USER} PASSWORD '{password}'")
        except BaseException:
            self.stop()
            raise

    def _server(self, program: str, *args: str) -> None:
        prefix = ["runuser", "-u", self.as_user, "--"] if self.as_user else []
        _run([*prefix, str(self.bin / program), *args])

    def _client(self, program: str, *args: str) -> None:
        """As the superuser, on the server's socket."""
        command = [str(self.bin / program), "--host", str(self.root), "--port", str(self.port),
                   "--username", SERVER_USER, *args]  # fmt: skip
        _run(command)
        self.commands.append(command)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.started:
            self._server("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


def _server_user() -> str | None:
    """Who runs initdb and postgres: None for this process's user, `postgres` for root."""
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run(["id", SERVER_USER], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        raise PostgresMissing(
            f"running as root ({getpass.getuser()}) and there is no {SERVER_USER!r} user to run "
            "PostgreSQL as: apt-get install postgresql creates it"
        ) from None
    return SERVER_USER


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")
