"""Which run of a model family is the champion, from run metadata only, so it fails fast
(before any model is loaded). tracking.registry finds the candidates and registers the winner."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import UserError
from ..tracking.registry import candidate_runs

if TYPE_CHECKING:
    from mlflow.entities import Run

TEST_METRIC = "best_test_acc"
VALIDATION_METRIC = "best_val_acc"


class ChampionError(UserError):
    """No run qualifies; the message says what to do."""


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

    def version_tags(self) -> dict[str, str]:
        """What the registered version says of where it came from."""
        return {
            "source_run_id": self.run_id,
            "metric": self.metric,
            "metric_value": repr(self.value),
            "model_params": self.run.data.params.get("model_params", "unknown"),
            "model": self.run.data.tags.get("model", "unknown"),
        }


def choose_best_run(
    experiment: str, model: str, metric: str = "", extra_filter: str = ""
) -> Candidate:
    """The best FINISHED, non-failed run of `model` in `experiment` (see choose_best)."""
    runs = candidate_runs(experiment, model, extra_filter)
    metric = metric or default_metric(runs)
    best = choose_best(runs, metric)
    if best is None:
        where = f" matching --filter {extra_filter!r}" if extra_filter.strip() else ""
        raise ChampionError(
            f"no FINISHED {model} run{where} in experiment {experiment!r} has a {metric} metric: "
            f"train one (cifar-mlflow train --model {model} --experiment {experiment}) "
            "or change --experiment, --filter or --metric"
        )
    return best


def choose_best(runs: list[Run], metric: str = "") -> Candidate | None:
    """The run with the highest `metric`; runs where it is missing or NaN do not compete.
    Without `metric`, the validation metric when every run logs it, else the test metric. Ties
    go to the older run, so a later run with an equal score does not take the champion's place.
    None when no run has the metric."""
    metric = metric or default_metric(runs)
    scored = [(r, r.data.metrics.get(metric)) for r in runs]
    scored = [(r, v) for r, v in scored if v is not None and not math.isnan(v)]
    if not scored:
        return None
    run, value = max(scored, key=lambda rv: (rv[1], -rv[0].info.start_time))
    return Candidate(run, metric, value, len(scored))


def default_metric(runs: list[Run]) -> str:
    if runs and all(VALIDATION_METRIC in r.data.metrics for r in runs):
        return VALIDATION_METRIC
    return TEST_METRIC
