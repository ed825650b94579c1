"""Evidence at the level of images, and what seeds add: pure functions over per-image outcomes.

Two configurations scored on the same test images are compared image by image:
- one run a side: McNemar's exact test (scipy's `binomtest` on the discordant images: those one
  run got right and the other wrong), with the paired difference's 95% normal interval;
- several runs: a two-level paired bootstrap of the accuracy difference: each of RESAMPLES draws
  resamples the seeds (seed pairs when both sides ran the same seeds), then the images, the same
  images for every run; the interval is the draws' 2.5th and 97.5th percentiles, the seed
  level's spread widened by √(k/(k−1)) for k seeds (the bootstrap's bias at few seeds). scipy's
  `bootstrap` resamples one level, so the draws are made here, from a seeded generator.
- P(A > B): the probability that a run of A beats a run of B, over every pair of runs (ties count
  half), with a percentile bootstrap interval over the runs of each side (`scipy.stats.bootstrap`).
- seeds needed: the seeds per side a t-test at ALPHA would need to detect a difference with
  POWER, from the observed seed-to-seed spread (the noncentral t distribution, closed form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 1000
SEED = 20240601  # every bootstrap is seeded: the same runs give the same report
CONFIDENCE = 0.95
POWER = 0.8
MAX_SEEDS = 1000
MCNEMAR, TWO_LEVEL = "McNemar exact test", "two-level paired bootstrap (seeds, then images)"


@dataclass(frozen=True)
class ImageEvidence:
    """value − reference on the same test images, as a fraction of them."""

    test: str  # MCNEMAR or TWO_LEVEL
    n_images: int
    mean: float
    low: float
    high: float
    p: float | None = None  # McNemar's two-sided exact p (one run a side)
    discordant: tuple[int, int] | None = None  # (value only right, reference only right)
    resamples: int | None = None  # of the bootstrap
    p_holm: float | None = None


def mcnemar(value: np.ndarray, reference: np.ndarray) -> ImageEvidence:
    """Two runs' per-image outcomes (True: right), the same images in the same order."""
    n = len(value)
    b = int(np.count_nonzero(value & ~reference))
    c = int(np.count_nonzero(~value & reference))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    mean = (b - c) / n
    z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
    half = z * math.sqrt(max((b + c) / n - mean**2, 0.0) / n)
    return ImageEvidence(MCNEMAR, n, mean, mean - half, mean + half, p, (b, c))


class ImageBootstrap:
    """The image level of the two-level bootstrap, drawn once per test set and shared by every
    difference of a report: RESAMPLES multinomial resamples of the images, and each run's
    accuracy on every resample, computed once per run."""

    def __init__(self, resamples: int = RESAMPLES, seed: int = SEED):
        self.resamples = resamples
        self.seed = seed
        self._weights: dict[int, np.ndarray] = {}
        self._accuracies: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def weights(self, n: int) -> np.ndarray:
        """(resamples, n) float32: how often each image is drawn in each resample."""
        if n not in self._weights:
            rng = np.random.default_rng([self.seed, n])
            weights = np.empty((self.resamples, n), np.float32)
            # measured: a bincount per resample took 0.6 s for 1000 x 10,000 images, one
            # bincount over all of them 1.3 s (the offsets' array).
            for row in weights:
                row[:] = np.bincount(rng.integers(0, n, n), minlength=n)
            self._weights[n] = weights
        return self._weights[n]

    def accuracies(self, correct: np.ndarray) -> np.ndarray:
        """A run's accuracy on each image resample."""
        key = id(correct)
        if key not in self._accuracies:  # the array is kept, so its id is not reused
            n = len(correct)
            acc = self.weights(n) @ correct.astype(np.float32) / n
            self._accuracies[key] = (correct, acc.astype(float))
        return self._accuracies[key][1]

    def difference(self, value: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                   paired: bool) -> ImageEvidence:  # fmt: skip
        """The two-level bootstrap of mean accuracy(value runs) − mean accuracy(reference runs);
        `paired`: the i-th runs of both sides share a seed, and seed pairs are resampled."""
        a = np.array([self.accuracies(c) for c in value])  # (runs, resamples)
        b = np.array([self.accuracies(c) for c in reference])
        rng = np.random.default_rng([self.seed, len(a), len(b), int(paired)])
        columns = np.arange(self.resamples)
        pick_a = rng.integers(0, len(a), (self.resamples, len(a)))
        pick_b = pick_a if paired else rng.integers(0, len(b), (self.resamples, len(b)))
        draws = (_seed_level(a, pick_a, columns) - _seed_level(b, pick_b, columns))
        mean = float(np.mean([c.mean() for c in value]) - np.mean([c.mean() for c in reference]))
        tail = (1 - CONFIDENCE) / 2 * 100
        low, high = np.percentile(draws, [tail, 100 - tail])
        return ImageEvidence(TWO_LEVEL, len(value[0]), mean, float(low), float(high),
                             resamples=self.resamples)  # fmt: skip


def _seed_level(accuracies: np.ndarray, picks: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The mean over resampled seeds on each image resample, its spread around the mean over all
    seeds widened by √(k/(k−1)): the bootstrap's variance of a mean of k is (k−1)/k of the
    unbiased one, which matters at 3 seeds."""
    k = accuracies.shape[0]
    centre = accuracies.mean(0)
    resampled = accuracies[picks, columns[:, None]].mean(1)
    return centre + (resampled - centre) * (math.sqrt(k / (k - 1)) if k > 1 else 1.0)


@dataclass(frozen=True)
class Improvement:
    """P(a run of A beats a run of B), with its bootstrap interval (None: `no_interval` says
    why)."""

    p: float
    low: float | None
    high: float | None
    resamples: int | None
    no_interval: str = ""


def _beats(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    wins = x[..., :, None] > y[..., None, :]
    ties = x[..., :, None] == y[..., None, :]
    return (wins + 0.5 * ties).mean(axis=(-2, -1))


def probability_of_improvement(a: Sequence[float], b: Sequence[float],
                               resamples: int = RESAMPLES, seed: int = SEED) -> Improvement:
    xs, ys = np.asarray(a, float), np.asarray(b, float)
    p = float(_beats(xs, ys))
    if len(xs) < 2 or len(ys) < 2:
        return Improvement(p, None, None, None, "one run on a side: no interval")
    if p in (0.0, 1.0):
        # Every run of one side beats every run of the other: each resample of them does too,
        # so the percentile interval is the point itself, a certainty that few runs do not give.
        return Improvement(p, None, None, None, f"every pair of runs agrees: no interval from "
                                                f"{len(xs)} vs {len(ys)} runs")  # fmt: skip
    result = stats.bootstrap((xs, ys), _beats, n_resamples=resamples, method="percentile",
                             confidence_level=CONFIDENCE, vectorized=True,
                             random_state=np.random.default_rng(seed))  # fmt: skip
    interval = result.confidence_interval
    return Improvement(p, float(interval.low), float(interval.high), resamples)


def power(effect: float, sd: float, n: int, paired: bool, alpha: float) -> float:
    """A two-sided t-test's power with n seeds per side: paired (one-sample t on the per-seed
    differences, sd theirs) or two-sample (sd the pooled one)."""
    if n < 2:
        return 0.0
    df = n - 1 if paired else 2 * n - 2
    ncp = effect / sd * (math.sqrt(n) if paired else math.sqrt(n / 2))
    critical = stats.t.ppf(1 - alpha / 2, df)
    # The lower tail as the upper tail of −T: scipy's nct.cdf returns NaN far out in it.
    return float(stats.nct.sf(critical, df, ncp) + stats.nct.sf(critical, df, -ncp))


def seeds_needed(effect: float, sd: float, paired: bool, alpha: float,
                 target: float = POWER) -> int | None:  # fmt: skip
    """The fewest seeds per side (at least 2) whose t-test detects `effect` with `target` power;
    None beyond MAX_SEEDS."""
    effect = abs(effect)
    if sd <= 0:
        return 2
    if effect == 0:
        return None
    low, high = 2, MAX_SEEDS
    if power(effect, sd, high, paired, alpha) < target:
        return None
    while low < high:  # power grows with n
        middle = (low + high) // 2
        if power(effect, sd, middle, paired, alpha) >= target:
            high = middle
        else:
            low = middle + 1
    return low


def seed_spread(a: Sequence[float], b: Sequence[float], paired: bool) -> float | None:
    """The seed-to-seed standard deviation a t-test would see: of the per-seed differences when
    paired, else the pooled one; None without two runs a side."""
    xs, ys = np.asarray(a, float), np.asarray(b, float)
    if len(xs) < 2 or len(ys) < 2:
        return None
    if paired:
        return float(np.std(xs - ys, ddof=1))
    return float(math.sqrt((np.var(xs, ddof=1) + np.var(ys, ddof=1)) / 2))
