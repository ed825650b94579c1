"""Differences between configurations with their uncertainty: pure functions over RunRecords.

Each difference is a mean over seeds with a 95% confidence interval and a p-value from scipy's
t-tests: paired by seed (`ttest_rel`) when both sides ran the same seeds once each, else Welch's
unpaired test (`ttest_ind(equal_var=False)`). With fewer than two runs on a side there is no
interval and no p-value ("n = 1"). Within one comparison the p-values are Holm-corrected.

Where every run of both sides logged its per-image outcomes on the same test set (paired.py), the
difference also carries image-level evidence: McNemar's exact test with one run a side, else a
two-level paired bootstrap interval; and, with two runs a side, P(A > B) with its interval and
the seeds per side a t-test would need. Only where no per-image outcomes exist does the test
set's sampling noise of one accuracy, ±1.96·√(p(1−p)/n_test), stand beside the differences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from .paired import (
    ImageBootstrap,
    ImageEvidence,
    Improvement,
    mcnemar,
    probability_of_improvement,
    seed_spread,
    seeds_needed,
)  # fmt: skip
from .study import Comparison, Configuration, RunRecord

CONFIDENCE = 0.95
ALPHA = 0.05  # a Holm-corrected p-value below it counts as a difference
Z_95 = 1.96
# The study's baseline of each factor: every other value is compared with it.
REFERENCE_VALUES = {"activation": "relu", "optimizer": "sgd", "model": "resnet18",
                    "init": "torch-default"}  # fmt: skip
MIN_EFFECT = 0.005  # the smallest accuracy difference of interest (0.5 pp), for seeds needed
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
    image: ImageEvidence | None = None  # on the same test images, where every run logged them
    improvement: Improvement | None = None  # P(a value run beats a reference run)
    seeds_needed: int | None = None  # per side, for the t-test to detect `target` with 80% power
    target: float | None = None  # the difference seeds_needed is for: observed, or min effect
    spread: float | None = None  # the seed-to-seed standard deviation it rests on

    @property
    def n(self) -> str:
        return f"{self.n_value} vs {self.n_reference}"

    @property
    def decided(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


Checkpoint = Callable[[RunRecord], str]  # the checkpoint whose per-image outcomes a measure is


def image_evidence(value: Sequence[RunRecord], reference: Sequence[RunRecord],
                   checkpoint: Checkpoint, paired: bool,
                   images: ImageBootstrap) -> ImageEvidence | None:  # fmt: skip
    """None unless every run logged its outcomes at its checkpoint on one and the same test set."""
    outcomes = [r.outcomes.get(checkpoint(r)) for r in (*value, *reference)]
    if not outcomes or any(o is None for o in outcomes):
        return None
    if len({o.digest for o in outcomes}) > 1 or len({len(o.correct) for o in outcomes}) > 1:
        return None
    a, b = [o.correct for o in outcomes[: len(value)]], [o.correct for o in outcomes[len(value):]]
    if len(a) == len(b) == 1:
        return mcnemar(a[0], b[0])
    return images.difference(a, b, paired)


def difference(
    value: Sequence[RunRecord], reference: Sequence[RunRecord],
    measure: Callable[[RunRecord], float], labels: tuple[str, str] = ("", ""),
    checkpoint: Checkpoint | None = None, images: ImageBootstrap | None = None,
    min_effect: float = 0.0,
) -> Difference:  # fmt: skip
    """The difference of `measure` between two groups of runs, paired by seed if it can be;
    with `checkpoint` (where `measure` is an accuracy: the checkpoint it is measured at), the
    image-level evidence too; seeds needed for the observed difference or `min_effect`,
    whichever is larger."""
    measured = _difference(value, reference, measure, labels)
    xs, ys = _finite(value, measure), _finite(reference, measure)
    paired = measured.test == PAIRED
    order = sorted(value, key=lambda r: r.seed), sorted(reference, key=lambda r: r.seed)
    if paired:
        xs, ys = [measure(r) for r in order[0]], [measure(r) for r in order[1]]
    image = None
    if checkpoint is not None:
        image = image_evidence(*order, checkpoint, paired, images or ImageBootstrap())
    improvement = probability_of_improvement(xs, ys) if xs and ys else None
    spread = seed_spread(xs, ys, paired)
    target = max(abs(measured.mean), min_effect) if math.isfinite(measured.mean) else None
    target = target or None  # no difference observed and none of interest: nothing to size
    needed = seeds_needed(target, spread, paired, ALPHA) if spread is not None and target else None
    return replace(measured, image=image, improvement=improvement, seeds_needed=needed,
                   target=target if spread is not None else None, spread=spread)  # fmt: skip


def _finite(runs: Sequence[RunRecord], measure: Callable[[RunRecord], float]) -> list[float]:
    return [x for x in (measure(r) for r in runs) if math.isfinite(x)]


def _difference(
    value: Sequence[RunRecord], reference: Sequence[RunRecord],
    measure: Callable[[RunRecord], float], labels: tuple[str, str],
) -> Difference:  # fmt: skip
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
    """Holm over the t-tests' p-values, and separately over McNemar's."""
    adjusted = holm([d.p for d in differences])
    image = holm([d.image.p if d.image else None for d in differences])
    return [replace(d, p_holm=p, image=replace(d.image, p_holm=q) if d.image else None)
            for d, p, q in zip(differences, adjusted, image)]  # fmt: skip


def headline(run: RunRecord) -> float:
    return run.headline


def headline_checkpoint(run: RunRecord) -> str:
    return run.headline_checkpoint


@dataclass(frozen=True)
class ComparisonStats:
    """Every configuration of a comparison against its reference, on the headline accuracy."""

    comparison: Comparison
    reference: Configuration | None  # None: the baseline did not run and nothing validated
    differences: list[Difference]  # in the comparison's order, the reference left out
    floor: float | None  # ±, as a fraction: the test set's sampling noise at the reference
    n_test: int | None
    chosen: str = ""  # how the reference was chosen, in words

    @property
    def image_level(self) -> bool:
        """Every difference rests on per-image outcomes: the single-accuracy floor is moot."""
        return bool(self.differences) and all(d.image for d in self.differences)


def reference_of(comparison: Comparison) -> tuple[Configuration | None, str]:
    """The study's baseline value (relu, sgd, resnet18, torch-default) if it ran, else the
    configuration with the best mean validation accuracy (at each run's selected epoch), else
    none: the test set never chooses. Returns it and how it was chosen."""
    baseline = REFERENCE_VALUES.get(comparison.factor)
    for configuration in comparison.configurations:
        if configuration.config[comparison.factor] == baseline:
            return configuration, f"the study's baseline, {baseline}"
    validated = [c for c in comparison.configurations if all(r.validated for r in c.runs)]
    if not validated:
        return None, (f"none: the baseline {baseline} did not run, and without a validation "
                      "split on every run nothing may choose one (the test set never does)")
    best = max(validated, key=lambda c: float(np.mean([r.best_val_acc for r in c.runs])))
    return best, (f"the best mean validation accuracy ({baseline}, the baseline, did not run)")


def comparison_stats(comparison: Comparison, images: ImageBootstrap | None = None,
                     min_effect: float = MIN_EFFECT) -> ComparisonStats:  # fmt: skip
    reference, chosen = reference_of(comparison)
    if reference is None:
        return ComparisonStats(comparison, None, [], None, None, chosen)
    images = images or ImageBootstrap()
    differences = with_holm([
        difference(c.runs, reference.runs, headline,
                   (comparison.label(c), comparison.label(reference)), headline_checkpoint,
                   images, min_effect)
        for c in comparison.configurations if c is not reference
    ])  # fmt: skip
    sizes = [r.test_images for r in reference.runs if r.test_images]
    n_test = min(sizes) if sizes else None
    accuracy = float(np.nanmean([r.headline for r in reference.runs]))
    floor = sampling_floor(accuracy, n_test) if n_test else None
    return ComparisonStats(comparison, reference, differences, floor, n_test, chosen)


def sampling_floor(accuracy: float, n_test: int) -> float:
    """Half-width of the 95% normal interval of an accuracy measured on n_test images."""
    return Z_95 * math.sqrt(accuracy * (1 - accuracy) / n_test)
