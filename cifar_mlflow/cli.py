"""The `cifar-mlflow` command line. Options are turned into a frozen config and handed down."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click
from click.core import ParameterSource

from . import config as cfg
from .config import DEFAULTS, TrainConfig
from .errors import UserError
from .models import ACTIVATIONS, MODELS

POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)


class OneLineErrors(click.Group):
    """Bad input ends in one line on stderr and a non-zero exit, never a usage dump or traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f"{ctx.command_path}: " if ctx else ""
            click.echo(f"error: {where}{e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("error: interrupted; the run was marked KILLED", err=True)
            sys.exit(130)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


class LazyCommands(OneLineErrors):
    """Commands other than `train` live beside their code and are imported only when run, so
    `cifar-mlflow train` does not pay for matplotlib, and `--help` stays fast."""

    lazy = {
        "compare": "cifar_mlflow.compare:command",
        "export": "cifar_mlflow.export:command",
        "predict": "cifar_mlflow.predict:command",
        "sweep": "cifar_mlflow.sweep:command",
    }

    def _available(self) -> dict[str, str]:
        return {n: t for n, t in self.lazy.items() if importlib.util.find_spec(t.split(":")[0])}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._available()])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self._available().get(name)
        if target is None:
            return super().get_command(ctx, name)
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyCommands)
def cli() -> None:
    """Run, track and compare CNN ablation studies on CIFAR-10 with MLflow."""


def _choice(names) -> click.Choice:
    return click.Choice(list(names), case_sensitive=False)


@cli.command()
@click.option("--model", type=_choice(MODELS), default=DEFAULTS.model, show_default=True)
@click.option("--activation", type=_choice(ACTIVATIONS), default=DEFAULTS.activation, show_default=True)
@click.option("--optimizer", type=_choice(cfg.OPTIMIZERS), default=DEFAULTS.optimizer, show_default=True,
              help="sgd; momentum: SGD with --momentum; adam")  # fmt: skip
@click.option("--lr", type=POSITIVE_FLOAT, default=DEFAULTS.lr, show_default=True)
@click.option("--momentum", type=NON_NEGATIVE_FLOAT, default=DEFAULTS.momentum, show_default=True)
@click.option("--weight-decay", type=NON_NEGATIVE_FLOAT, default=DEFAULTS.weight_decay, show_default=True)
@click.option("--epochs", type=POSITIVE_INT, default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=POSITIVE_INT, default=DEFAULTS.batch_size, show_default=True)
@click.option("--seed", type=NON_NEGATIVE_INT, default=DEFAULTS.seed, show_default=True)
@click.option("--data-dir", default=DEFAULTS.data_dir, show_default=True,
              help="torchvision's CIFAR-10 files (downloaded when absent) or train/<class>/ + test/<class>/ images")  # fmt: skip
@click.option("--train-limit", type=NON_NEGATIVE_INT, default=DEFAULTS.train_limit, show_default=True,
              help="keep the first N/10 training images of each class (0: all)")  # fmt: skip
@click.option("--test-limit", type=NON_NEGATIVE_INT, default=DEFAULTS.test_limit, show_default=True,
              help="keep the first N/10 test images of each class (0: all)")  # fmt: skip
@click.option("--val-size", type=NON_NEGATIVE_INT, default=DEFAULTS.val_size, show_default=True,
              help="hold out N training images (stratified, seeded) for validation")  # fmt: skip
@click.option("--schedule", type=_choice(cfg.SCHEDULES), default=DEFAULTS.schedule, show_default=True)
@click.option("--device", type=_choice(cfg.DEVICES), default=DEFAULTS.device, show_default=True)
@click.option("--precision", type=_choice(cfg.PRECISIONS), default=DEFAULTS.precision, show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU")  # fmt: skip
@click.option("--compile", type=click.BOOL, is_flag=False, flag_value="true", default=DEFAULTS.compile,
              show_default=True, help="train through torch.compile (`--compile` alone means true)")  # fmt: skip
@click.option("--experiment", default=DEFAULTS.experiment, show_default=True,
              help="MLflow experiment (ignored under `mlflow run`, which chooses it)")  # fmt: skip
@click.option("--system-metrics", type=click.BOOL, default=DEFAULTS.system_metrics, show_default=True,
              help="log CPU, memory and GPU utilisation alongside the run")  # fmt: skip
@click.option("--no-system-metrics", "system_metrics", flag_value=False, help="same as --system-metrics false")
@click.option("--resume", metavar="RUN_ID", default=None,
              help="continue this run after its last completed epoch, with its own settings")  # fmt: skip
@click.pass_context
def train(ctx: click.Context, resume: str | None, **options) -> None:
    """Train one model on CIFAR-10 and record it in MLflow."""
    from .progress import EpochReporter
    from .train import Interrupted, resumed_config, run_training

    if resume:
        given = [n for n in options if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(
                f"--resume continues a run with the settings it started with: drop "
                f"--{given[0].replace('_', '-')}"
            )
        config = resumed_config(resume)
    else:
        config = TrainConfig(**options)
    reporter = EpochReporter(config.epochs)
    try:
        run_id = run_training(
            config, reporter.on_epoch, reporter.wrap, reporter.on_start, resume=resume
        )
    except Interrupted as e:
        click.echo(f"error: {_stopped(e)}", err=True)
        sys.exit(128 + e.signum)  # the shell's convention for "ended by signal N"
    click.echo(f"run {run_id} finished")


def _stopped(e) -> str:
    if e.run_id is None:
        return f"{e}, before a run was opened"
    if not e.epochs_done:
        return f"{e}: run {e.run_id} is marked KILLED; it had no checkpoint yet"
    return (
        f"{e}: run {e.run_id} is marked KILLED after epoch {e.epochs_done}; continue it with "
        f"`cifar-mlflow train --resume {e.run_id}`"
    )


def main() -> None:
    cli(prog_name="cifar-mlflow")


if __name__ == "__main__":
    main()
