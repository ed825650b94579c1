"""The training configuration: one frozen dataclass, built once by the CLI and handed down.

Every default and every choice lives here, in a module that imports nothing heavy, so that
`cifar-mlflow --help` can show them without loading torch. The registries in models.py are
keyed by the same names (tests/test_models.py checks), and a test checks that the MLproject
parameters agree with the click options built from this module. Each option's own range is
checked by its click type (options.py); the rules between options are checked here, whenever a
TrainConfig is made (the CLI, a sweep's grid, a run read back to resume).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

from .errors import UserError

MODEL_NAMES = ("resnet18", "ghost_resnet18")
ACTIVATION_NAMES = ("relu", "leaky_relu", "gelu", "sigmoid", "silu")
# torch-default: each layer's own initialisation, as the study had it; kaiming: torchvision's
# ResNet (Kaiming-normal, fan-out, ReLU gain on every conv).
INIT_NAMES = ("torch-default", "kaiming")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Each field that names a choice, and its choices: checked whenever a TrainConfig is made, since
# a resumed run's params, a grid file or a tune's drawn settings never pass through click.
CHOICES = {"model": MODEL_NAMES, "activation": ACTIVATION_NAMES, "init": INIT_NAMES,
           "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES,
           "precision": PRECISIONS}  # fmt: skip

DEFAULT_EXPERIMENT = "cifar10-ablation"
# CIFAR-10's classes, in its label order: a model trained here names its outputs so (core.data
# labels every image by this order, whatever the layout on disk says).
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


TIME_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class CheckpointInterval:
    """One of the two: a checkpoint every `epochs` epochs, or once `seconds` have passed since
    the last one (looked at after each epoch)."""

    epochs: int | None = None
    seconds: float | None = None


def checkpoint_interval(text: str) -> CheckpointInterval:
    """`--checkpoint-every` read: a whole number of epochs (>= 1), or a time with its unit
    ("90s", "5m", "1.5h"); a UserError otherwise."""
    value = str(text).strip().lower()
    try:
        if value.isdigit() and int(value) >= 1:
            return CheckpointInterval(epochs=int(value))
        if value[-1:] in TIME_UNITS and float(value[:-1]) > 0:
            seconds = float(value[:-1]) * TIME_UNITS[value[-1]]
            if seconds < float("inf"):
                return CheckpointInterval(seconds=seconds)
    except ValueError:
        pass
    raise UserError(
        f"--checkpoint-every {text!r} is neither a number of epochs (1, 2, ...) nor a time "
        "with its unit (30s, 5m, 1h)"
    )


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet18"
    activation: str = "relu"
    init: str = "torch-default"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # used only by the "momentum" optimizer
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 128
    seed: int = 0
    data_dir: str = "data"
    train_limit: int = 0  # 0: every training image
    test_limit: int = 0  # 0: every test image
    # A count of training images (>= 1) or a fraction of them (0 < f < 1) held out, stratified
    # and seeded, to choose the checkpoint on; 0: none (the study's protocol, test curves only).
    val_size: float = 0.1
    schedule: str = "constant"
    device: str = "auto"
    # auto: bf16 autocast on a GPU that has bf16, else fp16 autocast with a gradient scaler;
    # fp32 on a CPU (core.engine.resolve_precision)
    precision: str = "auto"
    compile: bool = False
    experiment: str = DEFAULT_EXPERIMENT
    system_metrics: bool = True
    # When training state is saved to resume from: after this long ("30s", "5m", "1h") or every
    # N epochs ("1": each); always after the last epoch and when a signal stops the run.
    checkpoint_every: str = "5m"

    def __post_init__(self) -> None:
        for field, names in CHOICES.items():
            if getattr(self, field) not in names:
                raise UserError(
                    f"unknown {field} {getattr(self, field)!r}: choose one of {', '.join(names)} "
                    f"(--{field})"
                )
        checkpoint_interval(self.checkpoint_every)
        if self.train_limit:  # without a limit, core.data checks the split once it has the data
            held_out_images(self.val_size, self.train_limit)

    @property
    def run_name(self) -> str:
        return f"{self.model}-{self.activation}-{self.optimizer}-s{self.seed}"

    def as_params(self) -> dict[str, object]:
        return dataclasses.asdict(self)


DEFAULTS = TrainConfig()
# The settings a run that does not record them trained with: a run logged before `init` was a
# setting was initialised as `kaiming`. Reading a run's config back fills these in.
UNRECORDED = {"init": "kaiming"}


def held_out_images(val_size: float, train_images: int) -> int:
    """How many of `train_images` a `val_size` holds out: a count as given, a fraction rounded
    and at least one image per class; 0 holds out none. A UserError unless at least one image
    per class is left to train on."""
    if val_size <= 0:
        return 0
    held = max(round(val_size * train_images), len(CLASSES)) if val_size < 1 else int(val_size)
    if train_images - held < len(CLASSES):
        raise UserError(
            f"--val-size {val_size} holds out {held} of the {train_images} training images, "
            "leaving fewer than one per class to train on: choose a smaller --val-size (0: none) "
            "or train on more images (--train-limit)"
        )
    return held


def batch_size_used(batch_size: int, train_images: int) -> int:
    """The batch each step trains on: `batch_size`, or every training image where there are
    fewer; a warning says so (the run logs it as `batch_size_used`)."""
    if batch_size > train_images:
        warnings.warn(
            f"--batch-size {batch_size} is larger than the {train_images} training images: each "
            f"step trains on all {train_images} (logged as batch_size_used)",
            stacklevel=2,
        )
    return min(batch_size, train_images)


# Fields that do not change what a run learns: the seed varies within a configuration; where a
# run is filed and whether system metrics are sampled change nothing in the model, and
# when checkpoints are written does not either.
NOT_CONFIG = ("seed", "experiment", "system_metrics", "checkpoint_every")
# What defines a configuration (compare groups runs by these; a sweep adds the seed).
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_CONFIG)
