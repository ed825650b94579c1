"""The export's configuration, built once by the CLI; defaults the commands share. Nothing heavy
is imported here, so `--help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import DEFAULT_EXPERIMENT

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
    filter: str = ""  # an MLflow search filter ANDed with the family and FINISHED conditions
    name: str = ""  # "": cifar10-<model>
    alias: str = DEFAULT_ALIAS
    # None: the data the champion's run trained on (its data source and test limit).
    data_dir: str | None = None
    test_limit: int | None = None

    @property
    def registered_name(self) -> str:
        return self.name or registered_name(self.model)
