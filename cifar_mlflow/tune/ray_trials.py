"""A configuration's trials as Ray Tune trials: Ray's OptunaSearch draws the settings (into the
tune's own study, so a resumed tune counts them) and its ASHA scheduler stops the trials that
fall behind, fed `val_acc` per epoch. Each trial trains in-process on its Ray worker
(train.job.run_training) and logs straight to the tracking server.

A trial ASHA stops is ended by Ray, not by the training: its run is left RUNNING, and is ended
here once Tune is done, FINISHED and pruned at the last epoch it reported; a trial whose worker
died is ended FAILED. A failed trial (diverged) is one FAILED run; the others go on.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..core.config import TrainConfig
from ..core.engine import EpochMetrics
from ..core.selection import BestEpoch
from ..sweep.cluster import node_tags
from ..sweep.job import Execution
from ..sweep.ray_executor import fit_trials, import_ray
from ..tracking import tuning
from ..train.job import run_training
from .progress import TrialLines, settings_text
from .ranges import first_prunable_epoch
from .search import Search


@dataclass
class Seen:
    """What the driver heard of one Ray trial."""

    epoch: int = 0
    best_val_acc: float | None = None
    run_id: str = ""
    error: bool = False


def run_ray_trials(search: Search, base: TrainConfig, todo: int, tags: dict[str, str],
                   uri: str, execution: Execution, gpus: float, name: str) -> None:  # fmt: skip
    """`todo` trials of `search`'s study on the Ray session the tune opened."""
    configuration_run = tags[tuning.PARENT_TAG]
    _, tune = import_ray()
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space=search.space.distributions(), metric="best_val_acc", mode="max",
        sampler=search.sampler(), study_name=search.name, storage=search.storage,
    )  # fmt: skip
    # stop_last_trials=False: a trial at its last epoch finishes its own run (summary, models).
    # The grace period is the tune's warm-up: no trial is stopped before it.
    grace = min(first_prunable_epoch(base.epochs), base.epochs)
    scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=base.epochs,
                              grace_period=grace, stop_last_trials=False)  # fmt: skip
    trials = TuneTrials(name, base.epochs)
    fit_trials(
        tune.with_parameters(ray_trial, base=base, tags=tags, uri=uri),
        {"cpu": execution.cpus_per_trial, "gpu": gpus},
        tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=todo,
                        max_concurrent_trials=execution.parallel or 0),
        trials, f"tune-{name}",
    )  # fmt: skip
    for trial in tuning.trials_under(configuration_run):
        seen = trials.seen.get(trial.trial, Seen(error=True))
        if trial.outcome == "running":
            stopped = None if seen.error or not seen.epoch else seen.epoch
            tuning.end_stopped_trial(trial.run_id, stopped, seen.best_val_acc,
                                     f"pruned by ASHA at epoch {seen.epoch}"
                                     if stopped else "its Ray worker died")  # fmt: skip


def ray_trial(drawn: dict, base: TrainConfig, tags: dict[str, str], uri: str) -> None:
    """A Ray Tune trial: one training at the drawn settings, reporting each epoch."""
    from ray import tune

    os.environ["MLFLOW_TRACKING_URI"] = uri  # a worker of an existing cluster has its own env
    best = BestEpoch()
    run: dict[str, str] = {}

    def report(m: EpochMetrics) -> None:
        best.offer(m.epoch, m.val_acc)
        tune.report({"epoch": m.epoch, "val_acc": m.val_acc, "best_val_acc": best.val_acc, **run})

    config = dataclasses.replace(base, **drawn)
    trial = tune.get_context().get_trial_id()
    run_training(config, on_epoch=report, tags={**tuning.with_trial(tags, trial), **node_tags()},
                 log_models=False, on_start=lambda run_id, facts: run.update(run_id=run_id),
                 name=f"{config.run_name} trial {trial} ({settings_text(drawn)})")  # fmt: skip


class TuneTrials:
    """The driver's view of a configuration's Ray trials (sweep.ray_executor.TrialObserver): a
    line per trial event, and what each trial reported, to end the runs Ray stopped."""

    def __init__(self, name: str, epochs: int):
        self.name, self.epochs = name, epochs
        self.lines = TrialLines()
        self.seen: dict[str, Seen] = {}

    def label(self, trial) -> str:
        return f"{self.name} trial {trial.trial_id}"

    def started(self, trial) -> None:
        self.seen[trial.trial_id] = Seen()
        self.lines.started(self.label(trial), trial.config)

    def result(self, trial, result) -> None:
        seen = self.seen.setdefault(trial.trial_id, Seen())
        seen.epoch, seen.best_val_acc = result["epoch"], result["best_val_acc"]
        seen.run_id = result.get("run_id", "")
        self.lines.epoch(self.label(trial), result["epoch"], self.epochs, result["val_acc"])

    def complete(self, trial) -> None:
        seen = self.seen.setdefault(trial.trial_id, Seen())
        if seen.epoch < self.epochs:
            self.lines.pruned(self.label(trial), seen.epoch, self.epochs)
        else:
            self.lines.finished(self.label(trial), seen.best_val_acc, seen.run_id)

    def error(self, trial) -> None:
        self.seen.setdefault(trial.trial_id, Seen()).error = True
        self.lines.failed(self.label(trial), f"see {trial.error_file}")
