"""Differences between configurations with their uncertainty: pure functions over RunRecords.

Each difference is a mean over seeds with a 95% confidence interval and a p-value from scipy's
t-tests: paired by seed (`ttest_rel`) when both sides ran the same seeds once each, else Welch's
unpaired test (`ttest_ind(equal_var=False)`). With fewer than two runs on a side there is no
interval and no p-value ("n = 1"). Within one comparison the p-values are Holm-corrected. Beside
them stands the test set's own sampling noise, ±1.96·√(p(1−p)/n_test): no difference smaller
than that can be told from the luck of which images were drawn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from .study import Comparison, Configuration, RunRecord

CONFIDENCE = 0.95
ALPHA = 0.05  # a Holm-corrected p-value below it counts as a difference
Z_95 = 1.96
# The study's baseline of each factor: every other value is compared with it.
REFERENCE_VALUES = {"activation": "relu", "optimizer": "sgd", "model": "resnet18"}
PAIRED, WELCH, TOO_FEW = "paired t-test by seed", "Welch t-test", "n = 1"


@dataclass(frozen=True)
class Difference:
    """`measure(value) − measure(reference)` over the runs of two configurations."""

    value: str
    reference: str
    n_value: int
    n_reference: int
    mean: float  # NaN when a side has no finite measurement
    low: float | None  # the confidence interval; None with n = 1
    high: float | None
    p: float | None  # two-sided; None with n = 1 (or no spread at all on either side)
    test: str  # PAIRED, WELCH or TOO_FEW
    p_holm: float | None = None

    @property
    def n(self) -> str:
        return f"{self.n_value} vs {self.n_reference}"


def difference(
    value: Sequence[RunRecord], reference: Sequence[RunRecord],
    measure: Callable[[RunRecord], float], labels: tuple[str, str] = ("", ""),
) -> Difference:  # fmt: skip
    """The difference of `measure` between two groups of runs, paired by seed if it can be."""
    a = {r.seed: measure(r) for r in value}
    b = {r.seed: measure(r) for r in reference}
    xs, ys = [measure(r) for r in value], [measure(r) for r in reference]
    xs, ys = [x for x in xs if math.isfinite(x)], [y for y in ys if math.isfinite(y)]
    mean = float(np.mean(xs) - np.mean(ys)) if xs and ys else math.nan
    base = Difference(*labels, len(xs), len(ys), mean, None, None, None, TOO_FEW)
    if len(xs) < 2 or len(ys) < 2:
        return base
    paired = a.keys() == b.keys() and len(a) == len(value) == len(reference) == len(xs) == len(ys)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # identical values: scipy warns, says inf
        if paired:
            seeds = sorted(a)
            result = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        else:
            result = stats.ttest_ind(xs, ys, equal_var=False)
        interval = result.confidence_interval(CONFIDENCE)
    p, low, high = (float(x) for x in (result.pvalue, interval.low, interval.high))
    if not math.isfinite(p):  # no spread on either side: nothing to test against
        return replace(base, test=PAIRED if paired else WELCH)
    return replace(base, low=low, high=high, p=p, test=PAIRED if paired else WELCH)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (scipy has none): the i-th smallest of m p-values times
    (m − i), made monotone, capped at 1; None (no test) stays None and does not count in m."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def with_holm(differences: list[Difference]) -> list[Difference]:
    adjusted = holm([d.p for d in differences])
    return [replace(d, p_holm=p) for d, p in zip(differences, adjusted)]


def headline(run: RunRecord) -> float:
    return run.headline


@dataclass(frozen=True)
class ComparisonStats:
    """Every configuration of a comparison against its reference, on the headline accuracy."""

    comparison: Comparison
    reference: Configuration
    differences: list[Difference]  # in the comparison's order, the reference left out
    floor: float | None  # ±, as a fraction: the test set's sampling noise at the reference
    n_test: int | None


def reference_of(comparison: Comparison) -> Configuration:
    """The study's baseline value (relu, sgd, resnet18) if it ran, else the best on average."""
    baseline = REFERENCE_VALUES.get(comparison.factor)
    for configuration in comparison.configurations:
        if configuration.config[comparison.factor] == baseline:
            return configuration
    return max(comparison.configurations, key=lambda c: np.nanmean([r.headline for r in c.runs]))


def comparison_stats(comparison: Comparison) -> ComparisonStats:
    reference = reference_of(comparison)
    differences = with_holm([
        difference(c.runs, reference.runs, headline,
                   (comparison.label(c), comparison.label(reference)))
        for c in comparison.configurations if c is not reference
    ])  # fmt: skip
    sizes = [r.test_images for r in reference.runs if r.test_images]
    n_test = min(sizes) if sizes else None
    accuracy = float(np.nanmean([r.headline for r in reference.runs]))
    floor = sampling_floor(accuracy, n_test) if n_test else None
    return ComparisonStats(comparison, reference, differences, floor, n_test)


def sampling_floor(accuracy: float, n_test: int) -> float:
    """Half-width of the 95% normal interval of an accuracy measured on n_test images."""
    return Z_95 * math.sqrt(accuracy * (1 - accuracy) / n_test)
