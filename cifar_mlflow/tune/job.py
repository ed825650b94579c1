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

import click

from ..core.config import TrainConfig
from ..core.engine import Diverged
from ..core.errors import UserError
from ..sweep.executors import ray_session, trial_gpus
from ..sweep.grid import Grid, config_key, expand
from ..sweep.job import Execution, check_ray
from ..tracking import connection, sweeps, tuning
from ..tracking.runs import FINISHED, tracked_run
from ..train.job import run_training
from .charts import val_acc_vs_lr
from .command import DEFAULT_LR_RANGES, SEARCHED
from .progress import Row, TrialLines, best_trial, summary_table, summary_text
from .search import EpochWatch, Search, Space, open_storage

# A trial whose loss or weights stopped being finite: a finding about its settings, not a fault.


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
class Configuration:
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
    earlier = tuning.earlier_runs(sweeps.sweep_experiment(base.experiment, create=False), tune_id)
    path = Path(storage_path)
    if earlier.parent is not None and not path.exists():
        raise UserError(
            f"tune {tune_id} has runs on {uri} but its study file {path} is missing: run from the "
            "directory it started in, or give its --storage"
        )
    storage = open_storage(path, tune_id)
    experiment = sweeps.sweep_experiment(base.experiment, create=True)
    tuned = [_configuration(dataclasses.replace(c, experiment=experiment.name), tune_id, storage,
                            settings, earlier) for c in configs]  # fmt: skip
    interrupted = sum(c.search.fail_interrupted() for c in tuned)
    tuning.end_abandoned_trials(earlier.trials)
    todo = sum(c.todo(settings.trials) for c in tuned)
    click.echo(
        f"tune {tune_id}: {len(tuned)} configurations x {settings.trials} trials of "
        f"{base.epochs} epochs ({todo} trials to run) in experiment {experiment.name!r} on {uri}"
        f"\n  grid ({grid.source}): {grid.describe_axes() or 'one configuration'}; study file {path}"
        + (f"\n  {interrupted} interrupted trials of an earlier run are failed" if interrupted else "")
    )  # fmt: skip
    for c in tuned:
        click.echo(f"  {c.name}: {c.search.space.describe()}; {c.todo(settings.trials)} to run")
    if not todo and earlier.parent is not None and earlier.parent.info.status == FINISHED:
        click.echo(f"nothing to tune: every configuration has its {settings.trials} trials "
                   f"(parent run {earlier.parent.info.run_id})")  # fmt: skip
        click.echo(summary_text(_rows(tuned, earlier)))
        return
    params = {"tune.grid": grid.describe_axes()[:6000], "tune.grid_source": grid.source,
              "tune.trials": settings.trials, "tune.prune_after": settings.prune_after,
              "tune.executor": execution.executor, "tune.storage": str(path),
              **{f"base.{k}": v for k, v in base.as_params().items() if k not in SEARCHED}}  # fmt: skip
    spec = tuning.parent_spec(experiment.name, tune_id, params, earlier.parent)
    with tuning.tune_run(spec) as parent_id:
        with ray_session(execution.ray_address) if on_ray else contextlib.nullcontext():
            for c in tuned:
                if c.todo(settings.trials) or c.run is None or c.run.info.status != FINISHED:
                    _tune_configuration(c, tune_id, settings, execution, uri)
        _summarise(parent_id, _rows(tuned, tuning.earlier_runs(experiment, tune_id)))
    click.echo(
        f"tune {tune_id} finished: parent run {parent_id}; train the finals at the tuned settings "
        f"with `cifar-mlflow sweep --tuned {tune_id} --seeds 3`"
    )


def _configuration(config: TrainConfig, tune_id: str, storage, settings: TuneSettings,
                   earlier: tuning.Earlier) -> Configuration:  # fmt: skip
    key = config_key(config)
    search = Search(storage, tune_id, key, settings.space(config), {"epochs": config.epochs},
                    config.seed, settings.prune_after)  # fmt: skip
    return Configuration(config, key, search, earlier.configurations.get(key))


def _summarise(parent_id: str, rows: Sequence[Row]) -> None:
    """The table and the charts on the parent run, the table on the terminal; a configuration
    without a completed trial has no tuned setting: the parent ends FAILED and the tune exits
    non-zero."""
    tuning.log_summary(parent_id, summary_table(rows),
                       {r.name: val_acc_vs_lr(r.name, r.trials, r.best) for r in rows})  # fmt: skip
    click.echo(summary_text(rows))
    untuned = [r.name for r in rows if r.best is None]
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


def _tune_configuration(c: Configuration, tune_id: str, settings: TuneSettings,
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


def _rows(tuned: Sequence[Configuration], found: tuning.Earlier) -> list[Row]:
    rows = []
    for c in tuned:
        mine = [t for t in found.trials if t.config_key == c.key]
        run = found.configurations.get(c.key)
        rows.append(Row(c.name, run.info.run_id if run else "", mine, best_trial(mine)))
    return rows
