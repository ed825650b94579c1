"""Which runs are training runs, and finding them: the runs compare selects, the experiments
that hold training runs (named in every "no runs here" error), and a finished run's result.

A training run is one `cifar-mlflow train` recorded: tagged `trained_by` (TRAINED_BY), or, from
before that tag, holding every param it logs (its whole config and torch_version). A run of
another tool in the same experiment that happens to carry a `model` tag is none."""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..core.config import CONFIG_KEYS
from ..core.errors import UserError
from .connection import tracking_uri
from .runs import FINISHED, SWEEP_TAG

TRAINED_BY_TAG, TRAINED_BY = "trained_by", "cifar-mlflow train"
# What only our training logs, for runs recorded before TRAINED_BY_TAG.
TRAINING_PARAMS = (*CONFIG_KEYS, "seed", "torch_version")


def is_training_run(run: Run) -> bool:
    tags, params = run.data.tags, run.data.params
    if TRAINED_BY_TAG in tags:
        return tags[TRAINED_BY_TAG] == TRAINED_BY
    return all(k in params for k in TRAINING_PARAMS)


class SelectionError(UserError):
    """Nothing to compare, or a selection MLflow cannot answer; the message says what to do."""


@dataclass(frozen=True)
class Selection:
    """Which training runs to read: those of `experiment`, narrowed by an MLflow search filter
    and a sweep id, FINISHED only unless `include_unfinished`."""

    experiment: str
    filter: str = ""
    sweep: str = ""
    include_unfinished: bool = False

    def describe(self) -> str:
        narrowed = [f"--filter {self.filter!r}" if self.filter.strip() else "",
                    f"--sweep {self.sweep!r}" if self.sweep else ""]  # fmt: skip
        return " and ".join(x for x in narrowed if x)


@dataclass(frozen=True)
class Selected:
    runs: list[Run]  # the training runs selected
    foreign: list[Run]  # runs the selection matched that `cifar-mlflow train` did not record

    def left_out(self) -> str:
        """'' or what was left out and why, for the report and the user."""
        if not self.foreign:
            return ""
        names = ", ".join(r.info.run_name or r.info.run_id for r in self.foreign[:5])
        more = f" and {len(self.foreign) - 5} more" if len(self.foreign) > 5 else ""
        return (
            f"left out {len(self.foreign)} run(s) not recorded by `cifar-mlflow train` (no "
            f"{TRAINED_BY_TAG} tag, nor its params): {names}{more}"
        )


def training_runs(selection: Selection) -> list[Run]:
    """The selected training runs (see select_training_runs)."""
    return select_training_runs(selection).runs


def select_training_runs(selection: Selection) -> Selected:
    """The selected training runs, and the runs of other tools the search matched too."""
    client = MlflowClient()
    found = client.get_experiment_by_name(selection.experiment)
    if found is None:
        raise SelectionError(
            f"experiment {selection.experiment!r} does not exist on {tracking_uri()}"
            + (where_training_runs_are(selection.experiment)
               or ": name one that holds training runs with --experiment")
        )  # fmt: skip
    clauses = [selection.filter.strip()] if selection.filter.strip() else []
    clauses.append("tags.model IS NOT NULL")
    if selection.sweep:
        if "'" in selection.sweep:
            raise SelectionError(f"--sweep {selection.sweep!r}: a sweep id cannot contain a quote")
        clauses.append(f"tags.{SWEEP_TAG} = '{selection.sweep}'")
    if not selection.include_unfinished:
        clauses.append(f"attributes.status = '{FINISHED}'")
    try:
        runs = mlflow.search_runs(
            [found.experiment_id], " AND ".join(clauses), output_format="list"
        )
    except MlflowException as e:
        first_line = str(e.message).strip().splitlines()[0]
        if selection.filter.strip():
            raise SelectionError(
                f"--filter {selection.filter!r} was refused: {first_line}"
            ) from None
        raise SelectionError(
            f"searching experiment {selection.experiment!r} failed: {first_line}"
        ) from None
    selected = Selected([r for r in runs if is_training_run(r)],
                        [r for r in runs if not is_training_run(r)])  # fmt: skip
    if not selected.runs:
        what = "training runs" if selection.include_unfinished else "finished training runs"
        where = selection.describe()
        elsewhere = "" if where else where_training_runs_are(selection.experiment)
        foreign = f" ({selected.left_out()})" if selected.foreign else ""
        raise SelectionError(
            f"no {what} in experiment {selection.experiment!r}"
            f"{' matching ' + where if where else ''}{foreign}"
            + (elsewhere or ": train some first, or widen the selection")
        )
    return selected


def result_test_acc(metrics: Mapping[str, float]) -> float | None:
    """A finished run's test accuracy as a result: at its best-validation epoch
    (test_acc_at_best), else at its last epoch (final_test_acc); None for a run without them."""
    return metrics.get("test_acc_at_best", metrics.get("final_test_acc"))


def where_training_runs_are(excluding: str) -> str:
    """'; training runs are in experiment 'Default' (3 runs): pass --experiment Default', naming
    the experiments other than `excluding` that hold training runs (`mlflow run` without
    --experiment-name files them in 'Default'); '' when there are none."""
    client = MlflowClient()
    names = {e.experiment_id: e.name for e in client.search_experiments() if e.name != excluding}
    if not names:
        return ""
    runs = client.search_runs(list(names), "tags.model IS NOT NULL", max_results=1000)
    counts = Counter(names[r.info.experiment_id] for r in runs if is_training_run(r))
    if not counts:
        return ""
    listed = ", ".join(f"{name!r} ({n} runs)" for name, n in counts.most_common(3))
    first = counts.most_common(1)[0][0]
    return f"; training runs are in experiment {listed}: pass --experiment {shlex.quote(first)}"
