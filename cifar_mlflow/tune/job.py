"""`cifar-mlflow tune`'s work: each configuration of the grid gets `--trials` trials, short
trainings at settings Optuna draws (search.py), chosen on validation accuracy, run here one after
another or as Ray Tune trials (ray_trials.py), all recorded as nested MLflow runs
(tracking.tuning): the tune's parent run, a run per configuration holding its best setting, a
training run per trial.

Order matters for failures: the options, the tracking server, Ray and the study file are
checked before any run is opened, so bad input leaves no run behind. A tune stopped by a signal
ends its open runs KILLED and its running trial FAIL (interrupted); the same command with
`--tune-id` goes on from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..core.config import TrainConfig
from ..core.engine import Diverged
from ..core.errors import UserError
from ..core.redaction import redacted
from ..sweep.grid import Grid, config_key, expand
from ..sweep.job import Execution, check_ray
from ..sweep.ray_executor import ray_session, trial_gpus
from ..tracking import connection, sweeps, tuning
from ..tracking.runs import FINISHED, tracked_run
from ..train.job import run_training
from .charts import val_acc_vs_lr
from .progress import (
    ConfigurationTrials,
    TrialLines,
    best_trial,
    settings_text,
    summary_columns,
    summary_text,
)
from .ranges import DEFAULT_LR_RANGES, SEARCHED
from .search import EpochWatch, Search, Space, is_storage_url, open_storage

if TYPE_CHECKING:
    from mlflow.entities import Experiment


@dataclass(frozen=True)
class TuneSettings:
    """What every configuration's search does."""

    trials: int
    lr_range: tuple[float, float] | None = None  # None: the optimizer's default range
    weight_decay_range: tuple[float, float] | None = None  # None: not searched
    prune_after: int = 3

    def space(self, config: TrainConfig) -> Space:
        return Space(self.lr_range or DEFAULT_LR_RANGES[config.optimizer], self.weight_decay_range)


@dataclass
class ConfigurationSearch:
    """One configuration of the tune: the config its trials start from, its study, its run."""

    config: TrainConfig
    key: str
    search: Search
    run: object | None  # its run in an earlier invocation (mlflow.entities.Run), if any

    @property
    def name(self) -> str:
        return self.config.run_name

    def todo(self, trials: int) -> int:
        return max(0, trials - self.search.counted())


def run_tune(grid: Grid, base: TrainConfig, tune_id: str, settings: TuneSettings,
             execution: Execution, storage_path: str) -> None:  # fmt: skip
    configs = expand(base, grid.axes, (base.seed,))
    check_configs(configs, grid, settings)
    on_ray = execution.executor == "ray"
    if on_ray:
        check_ray(execution, connection.tracking_uri(), configs)
    uri = connection.connect()
    plan = _open_searches(configs, tune_id, settings, storage_path, redacted(uri))
    todo = sum(c.todo(settings.trials) for c in plan.searches)
    click.echo(_describe(plan, grid, base, tune_id, settings, todo, redacted(uri),
                         redacted(storage_path)))  # fmt: skip
    parent = plan.earlier.parent
    if not todo and parent is not None and parent.info.status == FINISHED:
        click.echo(f"nothing to tune: every configuration has its {settings.trials} trials "
                   f"(parent run {parent.info.run_id})")  # fmt: skip
        click.echo(summary_text(_summaries(plan.searches, plan.earlier)))
        return
    params = {"tune.grid": grid.describe_axes()[:6000], "tune.grid_source": grid.source,
              "tune.trials": settings.trials, "tune.prune_after": settings.prune_after,
              "tune.executor": execution.executor, "tune.storage": redacted(storage_path),
              **{f"base.{k}": v for k, v in base.as_params().items() if k not in SEARCHED}}  # fmt: skip
    with tuning.tune_run(tuning.parent_spec(plan.experiment.name, tune_id, params, parent)) as run:
        with ray_session(execution.ray_address) if on_ray else contextlib.nullcontext():
            for c in plan.searches:
                if c.todo(settings.trials) or c.run is None or c.run.info.status != FINISHED:
                    _tune_configuration(c, tune_id, settings, execution, uri)
        found = tuning.earlier_tune(plan.experiment, tune_id)
        _summarise(run, _summaries(plan.searches, found))
    click.echo(
        f"tune {tune_id} finished: parent run {run}; train the finals at the tuned settings "
        f"with `cifar-mlflow sweep --tuned {tune_id} --seeds 3`"
    )


def _describe(plan: TunePlan, grid: Grid, base: TrainConfig, tune_id: str,
              settings: TuneSettings, todo: int, uri: str, storage_path: str) -> str:  # fmt: skip
    lines = [
        f"tune {tune_id}: {len(plan.searches)} configurations x {settings.trials} trials of "
        f"{base.epochs} epochs ({todo} trials to run) in experiment {plan.experiment.name!r} on "
        f"{uri}",
        f"  grid ({grid.source}): {grid.describe_axes() or 'one configuration'}; study file "
        f"{storage_path}",
    ]
    if plan.interrupted:
        lines.append(f"  {plan.interrupted} interrupted trials of an earlier run are failed")
    lines += [f"  {c.name}: {c.search.space.describe()}; {c.todo(settings.trials)} to run"
              for c in plan.searches]  # fmt: skip
    return "\n".join(lines)


@dataclass(frozen=True)
class TunePlan:
    """The tune's configurations with their studies, and what earlier invocations left."""

    experiment: Experiment
    earlier: tuning.EarlierTune
    searches: list[ConfigurationSearch]
    interrupted: int  # trials an earlier invocation left running, now failed


def _open_searches(configs: Sequence[TrainConfig], tune_id: str, settings: TuneSettings,
                   storage_path: str, uri: str) -> TunePlan:  # fmt: skip
    """Each configuration's study in the tune's study file, with its run of an earlier
    invocation; trials that invocation left running (killed hard) are failed, in the study and
    on the server."""
    experiment_name = configs[0].experiment
    earlier = tuning.earlier_tune(sweeps.sweep_experiment(experiment_name, create=False), tune_id)
    if earlier.parent is not None and not (is_storage_url(storage_path)
                                           or Path(storage_path).exists()):  # fmt: skip
        raise UserError(
            f"tune {tune_id} has runs on {uri} but its study file {storage_path} is missing: run "
            "from the directory it started in, or give its --storage"
        )
    storage = open_storage(storage_path, tune_id)
    experiment = sweeps.sweep_experiment(experiment_name, create=True)
    searches = [_configuration(dataclasses.replace(c, experiment=experiment.name), tune_id,
                               storage, settings, earlier) for c in configs]  # fmt: skip
    interrupted = sum(c.search.fail_interrupted() for c in searches)
    tuning.end_abandoned_trials(earlier.trials)
    return TunePlan(experiment, earlier, searches, interrupted)


def _configuration(config: TrainConfig, tune_id: str, storage, settings: TuneSettings,
                   earlier: tuning.EarlierTune) -> ConfigurationSearch:  # fmt: skip
    key = config_key(config)
    search = Search(storage, tune_id, key, settings.space(config), {"epochs": config.epochs},
                    config.seed, settings.prune_after, config.epochs)  # fmt: skip
    return ConfigurationSearch(config, key, search, earlier.configurations.get(key))


def _summarise(parent_id: str, summaries: Sequence[ConfigurationTrials]) -> None:
    """The table and the charts on the parent run, the table on the terminal; a configuration
    without a completed trial has no tuned setting: the parent ends FAILED and the tune exits
    non-zero."""
    figures = {s.name: val_acc_vs_lr(s.name, s.trials, s.best) for s in summaries}
    tuning.log_tune_summary(parent_id, summary_columns(summaries), figures)
    click.echo(summary_text(summaries))
    untuned = [s.name for s in summaries if s.best is None]
    if untuned:
        raise UserError(
            f"{len(untuned)} configurations have no completed trial ({untuned[0]}...): lower or "
            "widen its --lr-range and give a new --tune-id"
        )


def check_configs(configs: Sequence[TrainConfig], grid: Grid, settings: TuneSettings) -> None:
    """A tune chooses on the validation split, and searches what no axis may fix."""
    if any(c.val_size == 0 for c in configs):
        raise UserError(
            "a tune chooses on the validation split, and --val-size is 0: give --val-size "
            "(a count or a fraction of the training images, e.g. 0.1)"
        )
    searched = (*SEARCHED, *(["weight_decay"] if settings.weight_decay_range else []))
    fixed = [k for group in grid.axes for k in group if k in searched]
    if fixed:
        raise UserError(
            f"the grid ({grid.source}) lists values of {fixed[0]}, which the tune searches: "
            f"leave it out of the grid"
        )


def _tune_configuration(c: ConfigurationSearch, tune_id: str, settings: TuneSettings,
                        execution: Execution, uri: str) -> None:  # fmt: skip
    spec = tuning.configuration_spec(
        c.config.experiment, tune_id, c.key, c.name,
        {**{k: v for k, v in c.config.as_params().items()
            if k not in c.search.space.distributions()},
         "tune.search": c.search.space.describe()}, c.run,
    )  # fmt: skip
    with tracked_run(spec) as run_id:
        tags = tuning.trial_tags(tune_id, c.key, run_id)
        todo = c.todo(settings.trials)
        if execution.executor == "ray" and todo:
            from .ray_trials import run_ray_trials  # Ray is imported only when it is used

            gpus = trial_gpus(execution.gpus_per_trial, execution.runs_per_gpu, {c.config.device})
            run_ray_trials(c.search, c.config, todo, tags, uri, execution, gpus, c.name)
        else:
            for _ in range(todo):
                run_local_trial(c.search, c.config, tags, c.name)
        tuning.log_best(run_id, best_trial(tuning.trials_under(run_id)))


def run_local_trial(search: Search, base: TrainConfig, tags: dict[str, str], name: str) -> None:
    """One trial in this process: train at the drawn settings, the pruner watching each epoch."""
    lines = TrialLines()
    trial, drawn = search.ask()
    config = dataclasses.replace(base, **drawn)
    label = f"{name} trial {trial.number}"
    lines.started(label, drawn)
    watch = EpochWatch(trial, config.epochs,
                       lambda m: lines.epoch(label, m.epoch, config.epochs, m.val_acc))  # fmt: skip
    try:
        run_id = run_training(
            config,
            on_epoch=watch,
            tags=tuning.with_trial(tags, str(trial.number)),
            log_models=False,  # a trial ranks a setting; the finals (`sweep --tuned`) keep models
            name=f"{label} ({settings_text(drawn)})",
        )
    except Diverged as e:  # its run ended FAILED with the reason; the tune goes on
        search.end(trial, "failed")
        lines.failed(label, str(e))
        return
    except BaseException:
        # Best effort: a signal can land inside one of Optuna's own commits (the pruner's
        # report), which leaves its session unusable; a trial left RUNNING is failed on resume.
        with contextlib.suppress(Exception):
            search.end(trial, "interrupted")
        raise
    if watch.pruned_at:
        tuning.mark_pruned(run_id, watch.pruned_at)
        search.end(trial, "pruned")
        lines.pruned(label, watch.pruned_at, config.epochs)
    else:
        search.end(trial, "complete", watch.best)
        lines.finished(label, watch.best, run_id)


def _summaries(searches: Sequence[ConfigurationSearch],
               found: tuning.EarlierTune) -> list[ConfigurationTrials]:  # fmt: skip
    summaries = []
    for c in searches:
        mine = [t for t in found.trials if t.config_key == c.key]
        run = found.configurations.get(c.key)
        summaries.append(ConfigurationTrials(c.name, run.info.run_id if run else "", mine,
                                             best_trial(mine)))  # fmt: skip
    return summaries
