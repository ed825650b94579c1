"""A configuration's search as an Optuna study, persisted (a SQLite file, or a database URL) so a
tune resumes.

One study per configuration, named `<tune id>/<configuration key>`, maximising the trial's best
validation accuracy (max over its epochs of `val_acc`: the validation split chooses; the test set
never does). The pruner is fed `val_acc` after every epoch. Each study records the tune id and the
settings it searches with, so a storage file of another tune, or a resume with other settings,
is refused rather than mixed in.

A trial counts toward `--trials` once it ended complete, pruned or failed (diverged: a finding
about its learning rate); a trial a signal or a crash interrupted is FAIL with outcome
`interrupted` and does not count, so a resumed tune adds it again once, and never repeats one
that counted. No MLflow, no printing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..core.engine import EpochMetrics, StopTraining
from ..core.errors import UserError
from ..core.files import writable_folder
from ..core.redaction import redacted
from ..core.selection import BestEpoch
from .ranges import first_prunable_epoch

OUTCOME = "outcome"  # a trial's user attr: complete, pruned, failed or interrupted
COUNTED = ("complete", "pruned", "failed")
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
          "failed": TrialState.FAIL, "interrupted": TrialState.FAIL}  # fmt: skip

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the tune prints its own line per trial


@dataclass(frozen=True)
class Space:
    """What a configuration's trials search, log-uniform: (low, high), or None: not searched."""

    lr: tuple[float, float]
    weight_decay: tuple[float, float] | None = None

    def describe(self) -> str:
        text = f"lr {self.lr[0]:g}..{self.lr[1]:g}"
        if self.weight_decay:
            text += f", weight decay {self.weight_decay[0]:g}..{self.weight_decay[1]:g}"
        return text

    def distributions(self) -> dict[str, optuna.distributions.FloatDistribution]:
        ranges = {"lr": self.lr, "weight_decay": self.weight_decay}
        return {name: optuna.distributions.FloatDistribution(*bounds, log=True)
                for name, bounds in ranges.items() if bounds}  # fmt: skip


def is_storage_url(storage: str) -> bool:
    """A database URL (sqlite:///x.db, postgresql://...) rather than the path of a SQLite file."""
    return "://" in storage


def open_storage(storage: str | os.PathLike, tune_id: str) -> optuna.storages.RDBStorage:
    """The tune's studies: in a SQLite file at a path, or in the database a URL names. One that
    holds another tune's studies is refused; one that cannot be opened or written is one line."""
    storage = os.fspath(storage)
    shown = redacted(storage)
    if is_storage_url(storage):
        url = storage
    else:
        path = Path(storage)
        writable_folder(path.parent.resolve(), "--storage's folder")
        if path.is_dir() or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
            raise UserError(f"--storage {storage} is a folder or a file this user cannot write: "
                            "give the path of a SQLite file to write")  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path.resolve()}"
    try:
        opened = optuna.storages.RDBStorage(url)
        studies = opened.get_all_studies()
    except Exception as e:  # SQLAlchemy's, a driver's ImportError, Optuna's own
        raise UserError(
            f"cannot open the study storage {shown} ({type(e).__name__}): give --storage a SQLite "
            "file in a folder you can write, or a database URL Optuna can open"
        ) from None
    owners = {s.user_attrs.get("tune_id") for s in studies} - {tune_id}
    if owners:
        raise UserError(
            f"{shown} holds the studies of tune {min(map(str, owners))}, not {tune_id}: "
            f"resume that tune with its own --tune-id, or give another --storage"
        )
    return opened


class Search:
    """The study of one configuration: ask for a trial's settings, watch its epochs, tell how
    it ended."""

    def __init__(self, storage: optuna.storages.RDBStorage, tune_id: str, key: str,
                 space: Space, settings: Mapping[str, object], seed: int, prune_after: int,
                 epochs: int):  # fmt: skip
        self.storage, self.space, self.seed = storage, space, seed
        self.name = f"{tune_id}/{key}"
        # Steps are epochs from 1, and the pruner says no while step < n_warmup_steps.
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=prune_after, n_warmup_steps=first_prunable_epoch(epochs)
        )
        self.study = optuna.create_study(
            storage=storage, study_name=self.name, direction="maximize", load_if_exists=True,
            pruner=pruner,
        )  # fmt: skip
        recorded = {"tune_id": tune_id, "settings": json.dumps({**settings, **asdict(space)})}
        held = self.study.user_attrs
        if "settings" in held and held["settings"] != recorded["settings"]:
            raise UserError(
                f"tune {tune_id} was started with other settings ({_differences(held, recorded)}): "
                "resume it with the options it started with, or give a new --tune-id"
            )
        for k, v in recorded.items():
            self.study.set_user_attr(k, v)

    def counted(self) -> int:
        return sum(t.user_attrs.get(OUTCOME) in COUNTED or _told_by_ray(t) for t in self.trials())

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def fail_interrupted(self) -> int:
        """Trials left RUNNING by a tune that was killed hard become FAIL, outcome interrupted
        (they stopped for no reason of theirs). Returns how many."""
        study_id = self.storage.get_study_id_from_name(self.name)
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in running:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            self.storage.set_trial_user_attr(trial_id, OUTCOME, "interrupted")
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        return len(running)

    def sampler(self) -> optuna.samplers.TPESampler:
        """Seeded by the number of trials so far: the same tune draws the same settings, and a
        resumed tune (a new sampler, its random state restarted) does not redraw a trial's."""
        return optuna.samplers.TPESampler(seed=self.seed + len(self.trials()))

    def ask(self) -> tuple[optuna.Trial, dict[str, float]]:
        self.study.sampler = self.sampler()
        trial = self.study.ask(self.space.distributions())
        return trial, dict(trial.params)

    def end(self, trial: optuna.Trial, outcome: str, value: float | None = None) -> None:
        if outcome == "complete" and value is None:  # no epoch reported a validation accuracy
            outcome = "failed"
        trial.set_user_attr(OUTCOME, outcome)
        self.study.tell(trial, value if outcome == "complete" else None, state=STATES[outcome])


class EpochWatch:
    """A trial's epoch callback: reports `val_acc` to the pruner, keeps the best epoch (its val
    acc is the trial's score), and stops the training (core.engine.StopTraining) when the pruner
    says so before the last epoch."""

    def __init__(self, trial: optuna.Trial, epochs: int,
                 on_epoch: Callable[[EpochMetrics], None] = lambda m: None):  # fmt: skip
        self.trial, self.epochs, self.on_epoch = trial, epochs, on_epoch
        self.best_epoch = BestEpoch()
        self.pruned_at: int | None = None

    @property
    def best(self) -> float | None:
        """The trial's score: the val acc of its best epoch so far (None: no epoch had one)."""
        return self.best_epoch.val_acc if self.best_epoch.found else None

    def __call__(self, metrics: EpochMetrics) -> None:
        self.on_epoch(metrics)
        if metrics.val_acc is None:
            return
        self.best_epoch.offer(metrics.epoch, metrics.val_acc)
        self.trial.report(metrics.val_acc, metrics.epoch)
        if metrics.epoch < self.epochs and self.trial.should_prune():
            self.pruned_at = metrics.epoch
            raise StopTraining(
                f"pruned at epoch {metrics.epoch}: val acc {metrics.val_acc:.4f} below the median "
                "of the completed trials at that epoch"
            )


def _told_by_ray(trial: optuna.trial.FrozenTrial) -> bool:
    """Ray's OptunaSearch tells its trials itself, without our outcome."""
    return OUTCOME not in trial.user_attrs and trial.state.is_finished()


def _differences(held: Mapping[str, str], recorded: Mapping[str, str]) -> str:
    old, new = json.loads(held["settings"]), json.loads(recorded["settings"])
    return ", ".join(f"{k} {old.get(k)} then, {new.get(k)} now"
                     for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))  # fmt: skip
