"""The `cifar-mlflow` command line: a group of commands, each imported only when it is used.

Each command's options live beside its code (`<package>/command.py`) and import only click and
core.config, so `cifar-mlflow --help` and `cifar-mlflow <command> --help` load neither torch nor
MLflow; a command loads what its work needs when it runs. Every error a user can fix ends in one
line on stderr and a non-zero exit, and a warning (a cache that cannot be written, a batch larger
than the data) is one line too; SIGINT and SIGTERM unwind the command (closing its MLflow run
as KILLED) and exit with 128 + the signal's number, the shell's convention.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator

import click

from .core.errors import UserError
from .core.redaction import redacted
from .core.signals import StopOnSignal

COMMANDS = {
    "train": "cifar_mlflow.train.command:train",
    "compare": "cifar_mlflow.compare.command:compare",
    "sweep": "cifar_mlflow.sweep.command:sweep",
    "tune": "cifar_mlflow.tune.command:tune",
    "export": "cifar_mlflow.export.command:export",
    "predict": "cifar_mlflow.export.command:predict",
}


class Commands(click.Group):
    """Commands by name, imported on first use; errors and signals as the module says."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            with StopOnSignal(), one_line_warnings():
                return super().main(*args, **kwargs)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.NoArgsIsHelpError as e:  # `cifar-mlflow` alone: the help
            e.show()
            sys.exit(e.exit_code)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f"{ctx.command_path}: " if ctx else ""
            click.echo(one_line(f"error: {where}{e.format_message()}"), err=True)
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt) as e:
            # click turns a KeyboardInterrupt raised by a command into Abort, caused by it.
            stop = e.__cause__ if isinstance(e.__cause__, KeyboardInterrupt) else e
            click.echo(one_line(f"error: {interruption(stop)}"), err=True)
            sys.exit(128 + getattr(stop, "signum", signal.SIGINT))
        except UserError as e:
            click.echo(one_line(f"error: {e}"), err=True)
            sys.exit(1)


def one_line(message: str) -> str:
    """`message` on one line whatever it quotes: a line break in an input echoed back (an
    experiment named "x\r", say) is shown escaped, as Python writes it; no credential in it."""
    return redacted(message).replace("\r", "\\r").replace("\n", "\\n")


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Warnings as `warning: <message>` on stderr, rather than Python's file, line and source
    line: what the user should read, not where it was raised."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        click.echo(one_line(f"warning: {message}"), err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def interruption(error: BaseException) -> str:
    """'stopped by SIGTERM: run ... is marked KILLED; ...': the signal, then what was done about
    it, from the notes that whatever was open (an MLflow run) added on the way out."""
    what = str(error) if isinstance(error, KeyboardInterrupt) and str(error) else "interrupted"
    notes = getattr(error, "__notes__", [])
    return what + (": " + "; ".join(notes) if notes else "")


# What the libraries print that a user cannot act on, off unless -v: MLflow's INFO lines
# (system metrics starting and stopping), its "View run" links (a command's last line says
# where its run is) and its artifact-download progress bars. Set in the environment, so a
# sweep's or tune's training processes are quiet too; a value the user set is kept.
QUIET_LIBRARIES = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@click.group(cls=Commands)
@click.option("-v", "--verbose", is_flag=True,
              help="also show what MLflow reports: INFO lines, run links, download progress")  # fmt: skip
def cli(verbose: bool) -> None:
    """Run, track and compare CNN ablation studies on CIFAR-10 with MLflow."""
    if not verbose:
        for name, value in QUIET_LIBRARIES.items():
            os.environ.setdefault(name, value)


def main() -> None:
    cli(prog_name="cifar-mlflow")


def mlproject_entry_point(command: str) -> None:
    """An MLproject entry point: `command` with the arguments `mlflow run` passes. MLflow needs a
    value for every parameter, so an optional one defaults to "" in MLproject; `--name ""` is
    left out here and keeps its meaning of "not given" (a derived default, the grid file's
    value), rather than overriding it with an empty string."""
    cli([command, *given_arguments(sys.argv[1:])], prog_name="cifar-mlflow")


def given_arguments(argv: list[str]) -> list[str]:
    """`--option value` pairs, without those whose value is ""."""
    return [arg for pair in zip(argv[::2], argv[1::2]) if pair[1] != "" for arg in pair]


if __name__ == "__main__":
    main()
