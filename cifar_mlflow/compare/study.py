"""A study's runs as plain data: no MLflow, no drawing, so tests can fabricate them.

A `RunRecord` is one training run (config, seed, metric histories). Runs that share a config
except the seed form a `Configuration`; configurations that differ in exactly one factor
(activation, optimizer or model) form a `Comparison`. `table_rows` and `seed_band` are the
numbers the table and the charts show.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..core.config import ACTIVATION_NAMES, CONFIG_KEYS, DEFAULTS, MODEL_NAMES, OPTIMIZERS
from ..core.selection import best_epoch

FACTORS = ("activation", "optimizer", "model", "init")
# A factor the report shows only where two configurations differ in it.
QUIET_FACTORS = ("init",)
# Runs logged without an `init` param were trained with Kaiming initialisation.
INIT_UNLOGGED = "kaiming"
# Known values in registry order: fixes the sort order of rows and each value's colour.
FACTOR_VALUES = {"activation": ACTIVATION_NAMES, "optimizer": OPTIMIZERS, "model": MODEL_NAMES,
                 "init": ("torch-default", "kaiming")}  # fmt: skip
TABLE_CONFIG_KEYS = ("model", "activation", "optimizer", "lr", "epochs")


@dataclass(frozen=True)
class Curve:
    epochs: np.ndarray  # int, ascending
    values: np.ndarray

    @classmethod
    def of(cls, points: Mapping[int, float]) -> Curve:
        """From {epoch: value}, in epoch order."""
        epochs = sorted(points)
        return cls(np.array(epochs, int), np.array([points[e] for e in epochs], float))


EMPTY_CURVE = Curve(np.zeros(0, int), np.zeros(0))


@dataclass(frozen=True, eq=False)
class Outcomes:
    """A checkpoint's outcome on each test image (True: right), in the test set's order, and the
    test set's digest: two runs are compared image by image only when their digests agree."""

    correct: np.ndarray  # bool
    digest: str


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One training run as compare sees it; fabricated freely in tests.

    Every number is derived from the per-epoch histories, so runs logged before the summary
    metrics existed are judged the same way. The epoch a run is judged by is chosen on
    validation (core.selection's rule: highest val_acc, ties to the earlier epoch); a run
    without a validation split is judged by its final epoch. The test set never chooses."""

    run_id: str
    name: str
    config: Mapping[str, str]  # CONFIG_KEYS as logged (strings); see effective_config
    seed: int
    model_params: int | None
    history: Mapping[str, Curve]
    test_images: int | None = None  # the test set's size (param test_images), for its noise
    tuned_from: str | None = None  # the tune whose learning rate this run used (tag tuned_from)
    experiment_id: str = ""
    outcomes: Mapping[str, Outcomes] = field(default_factory=dict)  # by checkpoint: best, final

    def curve(self, key: str) -> Curve:
        return self.history.get(key, EMPTY_CURVE)

    @property
    def validated(self) -> bool:
        return len(self.curve("val_acc").epochs) > 0

    @property
    def selected_epoch(self) -> int:
        """The best-validation epoch (core.selection's rule), else the last epoch."""
        val = self.curve("val_acc")
        best = best_epoch(zip(val.epochs.tolist(), val.values.tolist()))
        return best.epoch if best else int(self.curve("test_acc").epochs[-1])

    @property
    def headline_checkpoint(self) -> str:
        """The checkpoint the headline is measured at: `best` with validation, else `final`."""
        return "best" if self.validated else "final"

    @property
    def best_val_acc(self) -> float:
        """Validation accuracy at the selected epoch (NaN without validation)."""
        val = self.curve("val_acc")
        found = np.flatnonzero(val.epochs == self.selected_epoch) if self.validated else []
        return float(val.values[found[0]]) if len(found) else float("nan")

    @property
    def headline(self) -> float:
        """test_acc_at_best with a validation split, else final_test_acc."""
        return self.test_acc_at(self.selected_epoch)

    @property
    def test_acc_at_best(self) -> float:
        return self.headline if self.validated else float("nan")

    @property
    def final_test_acc(self) -> float:
        return float(self.curve("test_acc").values[-1])

    @property
    def max_test_acc(self) -> float:
        """The maximum of test accuracy over epochs: chosen on the test set, so optimistic."""
        return float(self.curve("test_acc").values.max())

    def test_acc_at(self, epoch: int) -> float:
        test = self.curve("test_acc")
        found = np.flatnonzero(test.epochs == epoch)
        return float(test.values[found[0]]) if len(found) else float("nan")

    @property
    def seconds_per_epoch(self) -> float:
        seconds = self.curve("epoch_seconds").values
        return float(seconds.mean()) if len(seconds) else float("nan")

    @property
    def epochs_to_90(self) -> float:
        """Convergence speed: the first epoch whose test accuracy reaches 90% of the final."""
        test = self.curve("test_acc")
        reached = np.flatnonzero(test.values >= 0.9 * test.values[-1])
        return float(test.epochs[reached[0]])

    @property
    def late_fluctuation(self) -> float:
        """Stability: the standard deviation of the epoch-to-epoch changes of test accuracy over
        the second half of training (changes into epochs after half the last epoch); NaN with
        fewer than two such changes."""
        test = self.curve("test_acc")
        changes = np.diff(test.values)[test.epochs[1:] > test.epochs[-1] / 2]
        return float(np.std(changes, ddof=1)) if len(changes) >= 2 else float("nan")


# What a run is judged by, as the report names it.
HEADLINE_NAMES = {"test_acc_at_best": "test accuracy at the best-validation epoch",
                  "final_test_acc": "final-epoch test accuracy (no validation split)",
                  "mixed": "test accuracy at the best-validation epoch where a run has a "
                           "validation split, else at its final epoch"}  # fmt: skip


def headline_kind(runs: Iterable[RunRecord]) -> str:
    """Which number `RunRecord.headline` is for these runs: a key of HEADLINE_NAMES."""
    kinds = {r.validated for r in runs}
    return "mixed" if len(kinds) > 1 else "test_acc_at_best" if True in kinds else "final_test_acc"


@dataclass(frozen=True, eq=False)
class Configuration:
    """The runs of one config, one per seed (or several: reruns count as more samples)."""

    config: Mapping[str, str]
    runs: tuple[RunRecord, ...]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def model_params(self) -> int | None:
        return self.runs[0].model_params

    @property
    def tuned(self) -> bool:
        """Every run used a learning rate found by a tune (`sweep --tuned`)."""
        return all(r.tuned_from for r in self.runs)

    def stat(self, of: str) -> tuple[float, float | None]:
        """Mean and sample standard deviation over the runs of a RunRecord property (None: n=1)."""
        values = np.array([getattr(r, of) for r in self.runs], float)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


@dataclass(frozen=True, eq=False)
class Comparison:
    """Configurations that agree on everything but `factor`, in the factor's value order."""

    factor: str
    fixed: Mapping[str, str]
    configurations: tuple[Configuration, ...]

    @property
    def tuned(self) -> bool:
        """Each value ran at the learning rate a tune found for it (so lr differs per value)."""
        return all(c.tuned for c in self.configurations)

    @property
    def qualifier(self) -> str:
        return "at tuned learning rates" if self.tuned else ""

    def label(self, configuration: Configuration) -> str:
        """The factor value, plus its settings where two lines share a value (momentum 0.9/0.99),
        and its learning rate at tuned learning rates."""
        value = configuration.config[self.factor]
        shared = sum(c.config[self.factor] == value for c in self.configurations) > 1
        config = configuration.config
        details = [f"{k} {config[k]}" for k in factor_settings(self.factor) if k in config]
        details = details if shared else []
        if self.tuned and "lr" in config:
            details.append(f"lr {config['lr']}")
        return f"{value} ({', '.join(details)})" if details else value


def factor_settings(factor: str) -> tuple[str, ...]:
    """Config keys that belong to a factor's value and vary with it."""
    return ("momentum",) if factor == "optimizer" else ()


def effective_config(params: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, str]:
    """The config that defines what a run learns, spelled one way. `mlflow run` logs parameters as
    typed ("1e-2", "40.0", "ResNet18"), so values are re-spelled through TrainConfig's types and
    the factors are read from the run's tags (set from the parsed config). Momentum is dropped
    unless the momentum optimizer is used: the others ignore it, so it must not split them."""
    config = {k: _canonical(k, params[k]) for k in CONFIG_KEYS if k in params}
    config.update({k: tags[k] for k in FACTORS if k in tags})
    config["init"] = params.get("init") or tags.get("init") or INIT_UNLOGGED
    if config.get("optimizer") != "momentum":
        config.pop("momentum", None)
    return config


def _canonical(key: str, value: str) -> str:
    kind = type(getattr(DEFAULTS, key))
    with contextlib.suppress(ValueError):
        if kind is bool:
            return str(value.strip().lower() in ("true", "1", "yes"))
        if kind in (int, float):
            return str(kind(float(value)))
    return value


def _sort_key(config: Mapping[str, str]) -> tuple:
    def order(key: str, value: str) -> tuple:
        known = FACTOR_VALUES.get(key, ())
        if value in known:
            return (0, known.index(value), "")
        with contextlib.suppress(ValueError):
            return (1, float(value), "")
        return (2, 0.0, value)

    columns = [*TABLE_CONFIG_KEYS, *sorted(set(_config_keys()) - set(TABLE_CONFIG_KEYS))]
    return tuple(order(k, config[k]) if k in config else (3, 0.0, "") for k in columns)


def group_configurations(runs: Iterable[RunRecord]) -> list[Configuration]:
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[tuple(sorted(run.config.items()))].append(run)
    configurations = [
        Configuration(dict(key), tuple(sorted(members, key=lambda r: (r.seed, r.run_id))))
        for key, members in groups.items()
    ]
    return sorted(configurations, key=lambda c: _sort_key(c.config))


def find_comparisons(configurations: Iterable[Configuration], factor: str) -> list[Comparison]:
    """Groups of at least two configurations that agree on every config value but `factor`.
    Tuned configurations (each value at its own tuned lr) are compared with each other, lr
    aside, and never with untuned ones."""
    groups: dict[tuple, list[Configuration]] = defaultdict(list)
    for configuration in configurations:
        varying = {factor, *factor_settings(factor), *(("lr",) if configuration.tuned else ())}
        fixed = {k: v for k, v in configuration.config.items() if k not in varying}
        groups[(configuration.tuned, tuple(sorted(fixed.items())))].append(configuration)
    return [
        Comparison(factor, dict(key), tuple(members))  # members keep the configurations' order
        for (_, key), members in groups.items()
        if len(members) >= 2
    ]


def varying_keys(configurations: Iterable[Configuration]) -> list[str]:
    """Config keys beyond TABLE_CONFIG_KEYS whose values differ between configurations."""
    values: dict[str, set] = defaultdict(set)
    for configuration in configurations:
        for key in _config_keys():
            values[key].add(configuration.config.get(key))
    return [k for k in _config_keys() if k not in TABLE_CONFIG_KEYS and len(values[k]) > 1]


def _config_keys() -> tuple[str, ...]:
    """TrainConfig's keys, and init (a factor even where TrainConfig has no such key)."""
    return CONFIG_KEYS if "init" in CONFIG_KEYS else (*CONFIG_KEYS, "init")


# Per-configuration statistics in the table (mean and std over runs). max_test_acc is the
# optimistic maximum over epochs, kept for older reports' sake and labelled so.
TABLE_STATS = ("headline", "test_acc_at_best", "final_test_acc", "max_test_acc")


def table_rows(configurations: list[Configuration]) -> list[dict[str, object]]:
    """One row per configuration, as numbers (accuracies are fractions); the CSV is these rows."""
    rows = []
    extra = varying_keys(configurations)
    for configuration in configurations:
        row: dict[str, object] = {
            k: configuration.config.get(k, "") for k in (*TABLE_CONFIG_KEYS, *extra)
        }
        row["params"] = configuration.model_params
        row["seeds"] = " ".join(str(s) for s in configuration.seeds)
        row["runs"] = len(configuration.runs)
        row["headline"] = headline_kind(configuration.runs)
        for stat in TABLE_STATS:
            row[f"{stat}_mean"], row[f"{stat}_std"] = configuration.stat(stat)
        row["selected_epoch_mean"] = configuration.stat("selected_epoch")[0]
        row["seconds_per_epoch_mean"] = configuration.stat("seconds_per_epoch")[0]
        row["run_ids"] = " ".join(r.run_id for r in configuration.runs)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Band:
    """A metric over the seeds of one configuration: mean line, min-max band, run count."""

    epochs: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def seed_band(curves: list[Curve]) -> Band:
    """Aggregate per epoch over the curves that reach it (an unfinished run stops early)."""
    epochs = np.unique(np.concatenate([c.epochs for c in curves]))
    table = np.full((len(curves), len(epochs)), np.nan)
    for row, curve in zip(table, curves):
        row[np.searchsorted(epochs, curve.epochs)] = curve.values
    with np.errstate(all="ignore"):
        return Band(
            epochs, np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0), len(curves)
        )
