"""The export's configuration, built once by the CLI; defaults the commands share. Nothing heavy
is imported here, so `--help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import DEFAULT_EXPERIMENT, DEFAULTS

DEFAULT_MODEL = "ghost_resnet18"
DEFAULT_ALIAS = "champion"


def registered_name(model: str) -> str:
    """The registry name a model family's champion is kept under, e.g. cifar10-ghost_resnet18."""
    return f"cifar10-{model}"


DEFAULT_MODEL_URI = f"models:/{registered_name(DEFAULT_MODEL)}@{DEFAULT_ALIAS}"


@dataclass(frozen=True)
class ExportConfig:
    model: str = DEFAULT_MODEL
    experiment: str = DEFAULT_EXPERIMENT
    metric: str = ""  # "": best_val_acc when every candidate run logs it, else best_test_acc
    filter: str = ""  # an MLflow search filter ANDed with the family and FINISHED conditions
    name: str = ""  # "": cifar10-<model>
    alias: str = DEFAULT_ALIAS
    data_dir: str = DEFAULTS.data_dir
    test_limit: int = DEFAULTS.test_limit

    @property
    def registered_name(self) -> str:
        return self.name or registered_name(self.model)
