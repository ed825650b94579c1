"""The model registry: the runs that may become a family's champion, and registering one.

A version is a model logged for one checkpoint (tracking.serving: it loads as the checkpoint's
PyTorch module and serves class names), tagged with that checkpoint. Registering is
all-or-nothing: the model is logged, the version created with its tags in one call, the alias
set next, and if a step fails what was made (the model, the version, a registered model
created for it) is deleted again. Registering a checkpoint a version already holds adds none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mlflow
from mlflow.entities import LoggedModel, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..core.errors import UserError
from .runs import FAILURE_TAG, FINISHED
from .training_runs import is_training_run, where_training_runs_are

# The registry's rules for an alias (MLflow's model registry documentation): letters, digits,
# '_' and '-', at most 255 characters; "latest" and "v<number>" are reserved. Checked before
# any work is done; should MLflow's rule be stricter, registering fails and rolls back.
ALIAS = re.compile(r"^[\w-]{1,255}$")
RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
CHECKPOINT_TAG = "checkpoint_model_id"  # on a version: the run's LoggedModel it was made from


class RegistryError(UserError):
    """No run qualifies, or the registry refused a step; the message says what to do."""


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str
    created: bool  # False when an existing version already held this run

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def check_alias(alias: str) -> None:
    if not ALIAS.match(alias):
        raise RegistryError(
            f"--alias {alias!r} cannot be used: use letters, digits, '_' and '-' (at most 255)"
        )
    if RESERVED_ALIAS.match(alias):
        raise RegistryError(
            f"--alias {alias!r} cannot be used: 'latest' and 'v<number>' are reserved by the "
            "registry"
        )


def candidate_runs(experiment: str, model: str, extra_filter: str = "") -> list[Run]:
    """The FINISHED runs of `model` in `experiment` that did not fail (a diverged run is FAILED
    and tagged failure_reason), narrowed by an MLflow search filter."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise RegistryError(
            f"experiment {experiment!r} does not exist: train into it first "
            f"(cifar-mlflow train --experiment {experiment!r}) or pass the right --experiment"
            f"{where_training_runs_are(experiment)}"
        )
    query = f"tags.model = '{model}' and attributes.status = '{FINISHED}'"
    if extra_filter.strip():
        query += f" and {extra_filter}"
    try:
        runs = mlflow.search_runs([found.experiment_id], query, output_format="list")
    except MlflowException as e:
        raise RegistryError(
            f"--filter {extra_filter!r} is not a valid MLflow filter: {e.message}"
        ) from None
    return [r for r in runs if FAILURE_TAG not in r.data.tags and is_training_run(r)]


def checkpoints_of(runs: list[Run]) -> list[LoggedModel]:
    """The `best` and `final` LoggedModels that `runs` logged, with their linked metrics."""
    if not runs:
        return []
    run_ids = {r.info.run_id for r in runs}
    found = mlflow.search_logged_models(
        experiment_ids=sorted({r.info.experiment_id for r in runs}),
        filter_string="name IN ('best', 'final')",
        output_format="list",
    )
    return [m for m in found if m.source_run_id in run_ids]


def register(checkpoint_id: str, run_id: str, name: str, alias: str, tags: Mapping[str, str],
             log_model: Callable[[], str]) -> Registration:  # fmt: skip
    """Point `name@alias` at a version holding the checkpoint `checkpoint_id` (a LoggedModel of
    run `run_id`): the version that holds it already (so registering the same champion twice
    adds nothing), else a new version of the model `log_model()` logs for it and returns the id
    of, tagged CHECKPOINT_TAG; that model is deleted again if registering fails."""
    client = MlflowClient()
    existing = _version_of_checkpoint(client, name, run_id, checkpoint_id)
    if existing is not None:
        try:
            client.set_registered_model_alias(name, alias, existing)
        except MlflowException as e:
            raise RegistryError(
                f"the model registry refused alias {alias!r} for {name} version {existing}: "
                f"{e.message}"
            ) from None
        return Registration(name, existing, alias, created=False)

    model_existed = _registered_model_exists(client, name)
    model_id = version = None
    try:
        model_id = log_model()
        version = mlflow.register_model(
            f"models:/{model_id}", name, tags={**tags, CHECKPOINT_TAG: checkpoint_id}
        ).version
        client.set_registered_model_alias(name, alias, version)
    except BaseException as e:
        _roll_back(client, name, version, delete_model=not model_existed, logged=model_id)
        if isinstance(e, MlflowException):
            raise RegistryError(f"registering run {run_id} as {name!r} failed "
                                f"(nothing was registered): {e.message}") from None  # fmt: skip
        raise
    return Registration(name, str(version), alias, created=True)


def describe(registration: Registration, model_text: str, version_text: str) -> None:
    """The registered model's and its version's descriptions (Markdown, on their UI pages)."""
    client = MlflowClient()
    client.update_registered_model(registration.name, description=model_text)
    client.update_model_version(registration.name, registration.version, description=version_text)


def tag_version(registration: Registration, key: str, value: str) -> None:
    MlflowClient().set_model_version_tag(registration.name, registration.version, key, value)


def _version_of_checkpoint(client: MlflowClient, name: str, run_id: str,
                           checkpoint_id: str) -> str | None:  # fmt: skip
    # Filtering on run_id only: run ids are hex, while registered names may hold quotes. A
    # version made before versions were tagged with their checkpoint was registered from the
    # checkpoint itself: its `source` names it (its model_id attribute comes back empty from
    # MLflow 3.17's registry).
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    matching = [v.version for v in versions if v.name == name and (
        v.tags.get(CHECKPOINT_TAG) == checkpoint_id or v.source == f"models:/{checkpoint_id}")]  # fmt: skip
    return str(min(matching, key=int)) if matching else None


def _registered_model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise RegistryError(f"cannot read registered model {name!r}: {e.message}") from None


def _roll_back(client: MlflowClient, name: str, version: str | None, delete_model: bool,
               logged: str | None) -> None:  # fmt: skip
    """Best effort: the original error is the one worth reporting."""
    try:
        if delete_model:
            client.delete_registered_model(name)  # deletes its versions too
        elif version is not None:
            client.delete_model_version(name, version)
        if logged is not None:
            client.delete_logged_model(logged)
    except MlflowException:
        pass
