"""Which checkpoint of a model family is the champion, from metadata only, so it fails fast
(before any model is loaded or any image decoded).

Every training run logs a `final` LoggedModel and, with a validation split, a `best` one (the
epoch with the highest val_acc). The champion is the `best` checkpoint with the highest
validation accuracy (its val_acc on the validation dataset) among the FINISHED, non-diverged
runs of the family: the test set chooses nothing. Only when no run has a validation split do the
`final` checkpoints compete, on their test accuracy, and the champion then says that it was
chosen on the test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import UserError
from ..tracking.datasets import dataset_name, metric_split
from ..tracking.registry import candidate_runs, checkpoints_of
from ..tracking.training_runs import where_training_runs_are

if TYPE_CHECKING:
    from mlflow.entities import LoggedModel, Run

ON_VALIDATION, ON_TEST = "validation", "test"


class ChampionError(UserError):
    """No run qualifies; the message says what to do."""


@dataclass(frozen=True)
class Candidate:
    """The checkpoint that would become the champion, with what it was chosen on."""

    run: Run
    checkpoint: LoggedModel
    chosen_on: str  # ON_VALIDATION (best checkpoints by val_acc) or ON_TEST (final by test_acc)
    qualifying_runs: int  # how many runs competed, for the report
    left_out: int = 0  # runs without validation, left out because others have it

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def model_uri(self) -> str:
        return f"models:/{self.checkpoint.model_id}"

    @property
    def metric(self) -> str:
        return "val_acc" if self.chosen_on == ON_VALIDATION else "test_acc"

    @property
    def value(self) -> float:
        return checkpoint_metric(self.checkpoint, self.metric)

    @property
    def epoch(self) -> int:
        return int(self.checkpoint.tags["epoch"])

    @property
    def test_acc(self) -> float:
        """The test accuracy training measured for this checkpoint (test_acc_at_best for a
        `best`, final_test_acc for a `final`)."""
        return checkpoint_metric(self.checkpoint, "test_acc")

    def version_tags(self) -> dict[str, str]:
        """What the registered version says of where it came from."""
        params = self.run.data.params
        tags = {
            "source_run_id": self.run_id,
            "checkpoint": self.checkpoint.name,
            "epoch": str(self.epoch),
            "chosen_on": self.chosen_on,
            "test_acc_at_best" if self.chosen_on == ON_VALIDATION else "final_test_acc":
                repr(self.test_acc),
            "model_params": params.get("model_params", "unknown"),
            "data_digest": params.get("data_digest", "unknown"),
            "model": self.run.data.tags.get("model", "unknown"),
        }  # fmt: skip
        if self.chosen_on == ON_VALIDATION:
            tags["val_acc"] = repr(self.value)
        return tags


def checkpoint_metric(checkpoint: LoggedModel, key: str) -> float:
    """The checkpoint's `key` as training measured it: on the dataset of its split (val_acc on
    the validation images), or, from a run whose metrics name no dataset, the unnamed one; a
    value linked to another dataset never stands in for it. Chosen here rather than by
    search_logged_models(datasets=...): each run has a validation split of its own (digest),
    and through a server MLflow 3.17 matches a dataset by name only when given its digest too
    (measured: name alone finds no model)."""
    split = metric_split(key)
    wanted = {dataset_name(split), None} if split else {None}
    values = {m.dataset_name: m.value for m in checkpoint.metrics or []
              if m.key == key and m.dataset_name in wanted}  # fmt: skip
    return values.get(dataset_name(split) if split else None, values.get(None, math.nan))


def choose_best_run(experiment: str, model: str, extra_filter: str = "") -> Candidate:
    """The champion checkpoint of `model` in `experiment` (see choose_best)."""
    runs = candidate_runs(experiment, model, extra_filter)
    best = choose_best(runs, checkpoints_of(runs))
    if best is None:
        where = f" matching --filter {extra_filter!r}" if extra_filter.strip() else ""
        raise ChampionError(
            f"no FINISHED {model} run{where} in experiment {experiment!r} has a logged `best` "
            f"or `final` checkpoint: train one (cifar-mlflow train --model {model} "
            f"--experiment {experiment!r}) or change --experiment or --filter"
            f"{where_training_runs_are(experiment) if not runs else ''}"
        )
    return best


def choose_best(runs: list[Run], checkpoints: list[LoggedModel]) -> Candidate | None:
    """The `best` checkpoint with the highest val_acc; when no run has one, the `final` with the
    highest test_acc. Checkpoints whose metric is missing or NaN do not compete; ties go to the
    older run, so a later run with an equal score does not take the champion's place."""
    by_run = {r.info.run_id: r for r in runs}
    for name, chosen_on, metric in (("best", ON_VALIDATION, "val_acc"),
                                    ("final", ON_TEST, "test_acc")):  # fmt: skip
        scored = [(by_run[c.source_run_id], c, checkpoint_metric(c, metric))
                  for c in checkpoints if c.name == name and c.source_run_id in by_run]  # fmt: skip
        scored = [(r, c, v) for r, c, v in scored if not math.isnan(v)]
        if scored:
            run, checkpoint, _ = max(scored, key=lambda s: (s[2], -s[0].info.start_time))
            competing = {r.info.run_id for r, _, _ in scored}
            others = {c.source_run_id for c in checkpoints if c.source_run_id in by_run}
            return Candidate(run, checkpoint, chosen_on, len(competing), len(others - competing))
    return None
