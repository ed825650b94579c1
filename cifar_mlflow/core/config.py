"""The training configuration: one frozen dataclass, built once by the CLI and handed down.

Every default and every choice lives here, in a module that imports nothing heavy, so that
`cifar-mlflow --help` can show them without loading torch. The registries in models.py are
keyed by the same names (tests/test_models.py checks), and a test checks that the MLproject
parameters agree with the click options built from this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_NAMES = ("resnet18", "ghost_resnet18")
ACTIVATION_NAMES = ("relu", "leaky_relu", "gelu", "sigmoid")
OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

DEFAULT_EXPERIMENT = "cifar10-ablation"


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet18"
    activation: str = "relu"
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
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    experiment: str = DEFAULT_EXPERIMENT
    system_metrics: bool = True

    @property
    def run_name(self) -> str:
        return f"{self.model}-{self.activation}-{self.optimizer}-s{self.seed}"

    def as_params(self) -> dict[str, object]:
        return dataclasses.asdict(self)


DEFAULTS = TrainConfig()

# Fields that do not change what a run learns: the seed varies within a configuration; where a
# run is filed and whether system metrics are sampled change nothing in the model.
NOT_CONFIG = ("seed", "experiment", "system_metrics")
# What defines a configuration (compare groups runs by these; a sweep adds the seed).
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_CONFIG)
