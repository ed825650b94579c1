"""`cifar-mlflow train`: its options, made from core.config's choices and defaults and nothing
heavier, so `--help` loads neither torch nor MLflow. The sweep takes the same options
(`CONFIG_OPTIONS`), once or repeated. Each option's type holds its rule (`--help` shows it), so
a value that makes no sense is refused before anything starts."""

from __future__ import annotations

import click
from click.core import ParameterSource

from ..core import config as cfg
from ..core.config import DEFAULTS, TrainConfig
from ..core.errors import UserError
from ..options import (
    CHECKPOINT_EVERY,
    EXPERIMENT_NAME,
    FRACTION,
    HELD_OUT,
    LEARNING_RATE,
    PER_CLASS_LIMIT,
    POSITIVE_INT,
    SEED,
    choice,
)


def _option(name: str, **kwargs) -> click.Option:
    """A TrainConfig field as an option, with the field's default."""
    return click.Option([f"--{name.replace('_', '-')}"], default=getattr(DEFAULTS, name),
                        show_default=True, **kwargs)  # fmt: skip


# One option per TrainConfig field, in its order: the options that make a config.
CONFIG_OPTIONS = [
    _option("model", type=choice(cfg.MODEL_NAMES)),
    _option("activation", type=choice(cfg.ACTIVATION_NAMES)),
    _option("init", type=choice(cfg.INIT_NAMES),
            help="initial weights: torch-default (each layer's own, as the study had it) or "
                 "kaiming (torchvision's ResNet: Kaiming-normal fan-out on every conv)"),
    _option("optimizer", type=choice(cfg.OPTIMIZERS),
            help="sgd; momentum: SGD with --momentum; adam (--weight-decay as L2 in the "
                 "gradient); adamw: Adam with decoupled --weight-decay"),
    _option("lr", type=LEARNING_RATE,
            help="learning rate, finite and within float32 (what torch steps with); one that "
                 "diverges ends the run FAILED"),
    _option("momentum", type=FRACTION, help="SGD momentum of --optimizer momentum"),
    _option("weight_decay", type=FRACTION, help="L2 weight decay"),
    _option("epochs", type=POSITIVE_INT),
    _option("batch_size", type=POSITIVE_INT,
            help="images per step; an epoch drops its last partial batch, so every step has "
                 "one shape (another part of the shuffle each epoch); more than the training "
                 "images: all of them (logged as batch_size_used)"),
    _option("seed", type=SEED),
    _option("data_dir", help="torchvision's CIFAR-10 files (downloaded when absent) or "
                             "train/<class>/ + test/<class>/ images"),
    _option("train_limit", type=PER_CLASS_LIMIT,
            help="keep the first N/10 training images of each class; 0: all, else N >= 10"),
    _option("test_limit", type=PER_CLASS_LIMIT,
            help="keep the first N/10 test images of each class; 0: all, else N >= 10"),
    _option("val_size", type=HELD_OUT,
            help="hold out N training images, or this fraction of them (stratified, seeded; at "
                 "least one per class), to choose the best epoch on; 0: none (test curves only); "
                 "at least one image per class must be left to train on"),
    _option("schedule", type=choice(cfg.SCHEDULES)),
    _option("device", type=choice(cfg.DEVICES)),
    _option("precision", type=choice(cfg.PRECISIONS),
            help="auto: bf16 autocast on a GPU that has bf16, else fp16 autocast with a gradient "
                 "scaler; fp32 on a CPU (logged as precision_used); bf16 where the GPU lacks it "
                 "is refused"),
    _option("compile", type=click.BOOL, is_flag=False, flag_value="true",
            help="train through torch.compile (`--compile` alone means true); where it cannot "
                 "work, trains uncompiled and says why (logged as compile_used, compile_fallback)"),
    _option("experiment", type=EXPERIMENT_NAME,
            help="MLflow experiment, not blank, at most 500 characters (ignored under `mlflow "
                 "run`, which chooses it)"),
    _option("system_metrics", type=click.BOOL,
            help="log CPU, memory and GPU utilisation alongside the run"),
    _option("checkpoint_every", type=CHECKPOINT_EVERY,
            help="save the state to resume from after this long (30s, 5m, 1h) or every N "
                 "epochs; always after the last epoch and on SIGINT/SIGTERM"),
]  # fmt: skip
NO_SYSTEM_METRICS = click.Option(["--no-system-metrics", "system_metrics"], flag_value=False,
                                 help="same as --system-metrics false")  # fmt: skip
RESUME = click.Option(["--resume"], metavar="RUN_ID", default=None,
                      help="continue this run after its last completed epoch, with its own settings")  # fmt: skip


RUN_NAME = click.Option(["--run-name"], metavar="NAME", default=None,
                        help="name of the MLflow run  [default: its configuration, e.g. "
                             "resnet18-relu-sgd-s0]")  # fmt: skip


@click.command(params=[*CONFIG_OPTIONS, NO_SYSTEM_METRICS, RESUME, RUN_NAME])
@click.pass_context
def train(ctx: click.Context, resume: str | None, run_name: str | None, **options) -> None:
    """Train one model on CIFAR-10 and record it in MLflow."""
    from .job import resumed_config, run_training
    from .progress import EpochReporter

    if resume is not None and not resume.strip():  # `--resume "$RUN"` with RUN unset
        raise click.UsageError("--resume needs a run id (printed when a run starts)")
    if resume:
        given = [n for n in options if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(
                f"--resume continues a run with the settings it started with: drop "
                f"--{given[0].replace('_', '-')}"
            )
        config = resumed_config(resume)
    else:
        try:
            config = TrainConfig(**options)
        except UserError as e:  # a rule between options: click's usage error, like the others
            raise click.UsageError(str(e)) from None
    reporter = EpochReporter(config.epochs)
    run_training(config, reporter.on_epoch, reporter.wrap, reporter.on_start, reporter.on_end,
                 resume=resume, name=run_name)  # fmt: skip
