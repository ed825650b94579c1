"""Choose the best training run of a model family and register it as the champion.

Choosing reads only run metadata, so it fails fast (before any model is loaded). Registering is
all-or-nothing: the version is created with its tags in one call, the alias is set next, and if
either step fails the new version (and a registered model created for it) is deleted again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .errors import UserError
from .tracking import FAILURE_TAG

DEFAULT_MODEL = "ghost_resnet18"
DEFAULT_ALIAS = "champion"
TEST_METRIC = "best_test_acc"
VALIDATION_METRIC = "best_val_acc"


def registered_name(model: str) -> str:
    """The registry name a model family's champion is kept under, e.g. cifar10-ghost_resnet18."""
    return f"cifar10-{model}"


class ChampionError(UserError):
    """No run qualifies, or the registry refused a step; the message says what to do."""


@dataclass(frozen=True)
class Candidate:
    run: Run
    metric: str
    value: float
    qualifying_runs: int  # how many runs competed, for the report

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def model_uri(self) -> str:
        # Training tags the run with its LoggedModel's URI (models:/m-...); runs:/ also resolves.
        return self.run.data.tags.get("model_uri") or f"runs:/{self.run_id}/model"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str
    created: bool  # False when an existing version already held this run

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def choose_best_run(
    experiment: str, model: str, metric: str = "", extra_filter: str = ""
) -> Candidate:
    """The FINISHED run of `model` with the highest `metric` in `experiment`.

    Failed and diverged runs never qualify (a diverged run is FAILED and tagged failure_reason),
    nor do runs whose metric is missing or NaN. Without `metric`, runs are compared on the
    validation metric when every one of them logs it, else on the test metric. Ties go to the
    older run, so a later run with an equal score does not take the champion's place.
    """
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise ChampionError(
            f"experiment {experiment!r} does not exist: train into it first "
            f"(cifar-mlflow train --experiment {experiment}) or pass the right --experiment"
        )
    query = f"tags.model = '{model}' and attributes.status = 'FINISHED'"
    if extra_filter.strip():
        query += f" and {extra_filter}"
    try:
        runs = mlflow.search_runs([found.experiment_id], query, output_format="list")
    except MlflowException as e:
        raise ChampionError(
            f"--filter {extra_filter!r} is not a valid MLflow filter: {e.message}"
        ) from None
    runs = [r for r in runs if FAILURE_TAG not in r.data.tags]
    metric = metric or default_metric(runs)
    scored = [(r, r.data.metrics.get(metric)) for r in runs]
    scored = [(r, v) for r, v in scored if v is not None and not math.isnan(v)]
    if not scored:
        where = f" matching --filter {extra_filter!r}" if extra_filter.strip() else ""
        raise ChampionError(
            f"no FINISHED {model} run{where} in experiment {experiment!r} has a {metric} metric: "
            f"train one (cifar-mlflow train --model {model} --experiment {experiment}) "
            "or change --experiment, --filter or --metric"
        )
    run, value = max(scored, key=lambda rv: (rv[1], -rv[0].info.start_time))
    return Candidate(run, metric, value, len(scored))


def default_metric(runs: list[Run]) -> str:
    if runs and all(VALIDATION_METRIC in r.data.metrics for r in runs):
        return VALIDATION_METRIC
    return TEST_METRIC


def check_alias(alias: str) -> None:
    """Refuse an alias the registry would refuse, before anything is registered."""
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
    )

    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException as e:
        raise ChampionError(f"--alias {alias!r} cannot be used: {e.message}") from None


def register_champion(candidate: Candidate, name: str, alias: str) -> Registration:
    """Point `name@alias` at the candidate's model, adding a version only when no version of
    `name` holds that run yet (so exporting the same champion twice adds nothing)."""
    client = MlflowClient()
    existing = _version_of_run(client, name, candidate.run_id)
    if existing is not None:
        _call_registry(client.set_registered_model_alias, name, alias, existing)
        return Registration(name, existing, alias, created=False)

    model_existed = _registered_model_exists(client, name)
    version = None
    try:
        version = mlflow.register_model(
            candidate.model_uri, name, tags=version_tags(candidate)
        ).version
        client.set_registered_model_alias(name, alias, version)
    except BaseException as e:
        _roll_back(client, name, version, delete_model=not model_existed)
        if isinstance(e, MlflowException):
            raise ChampionError(f"registering run {candidate.run_id} as {name!r} failed "
                                f"(nothing was registered): {e.message}") from None  # fmt: skip
        raise
    return Registration(name, str(version), alias, created=True)


def version_tags(candidate: Candidate) -> dict[str, str]:
    params = candidate.run.data.params
    return {
        "source_run_id": candidate.run_id,
        "metric": candidate.metric,
        "metric_value": repr(candidate.value),
        "model_params": params.get("model_params", "unknown"),
        "model": candidate.run.data.tags.get("model", "unknown"),
    }


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    # Filtering on run_id only: run ids are hex, while registered names may hold quotes.
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    matching = [v.version for v in versions if v.name == name]
    return str(min(matching, key=int)) if matching else None


def _registered_model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise ChampionError(f"cannot read registered model {name!r}: {e.message}") from None


def _roll_back(client: MlflowClient, name: str, version: str | None, delete_model: bool) -> None:
    """Best effort: the original error is the one worth reporting."""
    try:
        if delete_model:
            client.delete_registered_model(name)  # deletes its versions too
        elif version is not None:
            client.delete_model_version(name, version)
    except MlflowException:
        pass


def _call_registry(step, *args) -> None:
    try:
        step(*args)
    except MlflowException as e:
        raise ChampionError(f"the model registry refused {step.__name__}{args}: {e.message}")
