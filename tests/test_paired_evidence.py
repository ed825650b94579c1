"""Evidence at the level of images (compare/paired.py, stats.py): fabricated per-image outcomes
with known answers (McNemar's p by hand, bootstrap coverage over simulated studies, seeds needed
against published t-test power tables), the reference never chosen on the test set, init a
factor; and one end to end on a real server: one run a side, then three seeds a side."""

from __future__ import annotations

import csv
import html as markup
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.compare.paired import (
    MCNEMAR,
    TWO_LEVEL,
    ImageBootstrap,
    mcnemar,
    power,
    probability_of_improvement,
    seeds_needed,
)  # fmt: skip
from cifar_mlflow.compare.stats import ALPHA, comparison_stats, difference, headline
from cifar_mlflow.compare.study import (
    Comparison,
    Curve,
    Outcomes,
    RunRecord,
    find_comparisons,
    group_configurations,
)  # fmt: skip
from cifar_mlflow.testing.runs import fabricated_outcomes, log_synthetic_run

from .conftest import tracking_on


def record(activation: str, seed: int, test: float, val: float | None = 0.5,
           correct: np.ndarray | None = None, digest: str = "d", init: str = "kaiming",
           ) -> RunRecord:  # fmt: skip
    history = {"test_acc": Curve.of({1: test})}
    if val is not None:
        history["val_acc"] = Curve.of({1: val})
    checkpoint = "best" if val is not None else "final"
    outcomes = {checkpoint: Outcomes(correct, digest)} if correct is not None else {}
    config = {"model": "resnet18", "activation": activation, "optimizer": "sgd", "init": init}
    return RunRecord(f"{activation}-{seed}", f"{activation}-{seed}", config, seed, 1, history,
                     outcomes=outcomes)  # fmt: skip


def outcomes_with(discordant: tuple[int, int], agree: int) -> tuple[np.ndarray, np.ndarray]:
    """Two runs' outcomes: `discordant` (only the first right, only the second right), then
    `agree` images both got right."""
    b, c = discordant
    first = np.array([True] * b + [False] * c + [True] * agree)
    second = np.array([False] * b + [True] * c + [True] * agree)
    return first, second


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images():
    first, second = outcomes_with((10, 2), 88)
    evidence = mcnemar(first, second)
    # By hand: two-sided, 2·P(X ≤ 2) for X ~ Binomial(12, 1/2) = 2·(1 + 12 + 66) / 4096.
    assert evidence.p == pytest.approx(2 * 79 / 4096)
    assert evidence.discordant == (10, 2) and evidence.n_images == 100
    assert evidence.mean == pytest.approx(0.08) and evidence.low < 0.08 < evidence.high
    assert mcnemar(*outcomes_with((0, 0), 50)).p == 1.0


def simulated_study(rng: np.random.Generator, seeds: int, truth: float, images: int = 400):
    """A population of images of difficulty U(0.2, 0.8), a run's offset U(−0.1, 0.1): every
    probability stays in (0, 1), so the expected difference over images and seeds is `truth`."""
    base = rng.uniform(0.2, 0.8, images)
    value = [rng.random(images) < base + truth + rng.uniform(-0.1, 0.1) for _ in range(seeds)]
    reference = [rng.random(images) < base + rng.uniform(-0.1, 0.1) for _ in range(seeds)]
    return value, reference


@pytest.mark.parametrize("paired", [False, True])
def test_the_two_level_bootstrap_covers_the_truth_at_its_level(paired):
    """At 95%, the interval holds the true difference in at least 90% of 200 simulated studies
    of 3 seeds a side (seeds and images both drawn afresh in each)."""
    rng, truth, covered = np.random.default_rng(7), 0.05, 0
    for study in range(200):
        value, reference = simulated_study(rng, 3, truth)
        evidence = ImageBootstrap(seed=study).difference(value, reference, paired)
        assert evidence.test == TWO_LEVEL and evidence.resamples == 1000
        covered += evidence.low <= truth <= evidence.high
    assert covered / 200 >= 0.90, covered


def test_the_bootstrap_is_seeded():
    value, reference = simulated_study(np.random.default_rng(1), 3, 0.0)
    first = ImageBootstrap().difference(value, reference, False)
    assert first == ImageBootstrap().difference(value, reference, False)


@pytest.mark.parametrize("effect, paired, seeds", [
    (0.5, False, 64), (0.8, False, 26), (1.0, False, 17),  # Cohen (1988), two-sample t-test
    (0.5, True, 34),  # paired: one-sample t-test on the differences, d_z = 0.5
])  # fmt: skip
def test_seeds_needed_match_t_test_power_tables(effect, paired, seeds):
    """80% power at α = 0.05 two-sided; the standard deviation is 1, so effect is Cohen's d."""
    assert seeds_needed(effect, 1.0, paired, 0.05) == seeds
    assert power(effect, 1.0, seeds, paired, 0.05) >= 0.8 > power(effect, 1.0, seeds - 1, paired,
                                                                   0.05)  # fmt: skip
    assert seeds_needed(effect * 1e-4, 1.0, paired, 0.05) is None  # beyond any study


def test_probability_of_improvement_counts_pairs_with_ties_half():
    improvement = probability_of_improvement([3, 4, 5], [1, 2, 3])
    assert improvement.p == pytest.approx(8.5 / 9)
    assert 0 <= improvement.low <= improvement.p <= improvement.high <= 1
    assert improvement.resamples == 1000
    one = probability_of_improvement([0.9], [0.8])
    assert (one.p, one.low, one.high) == (1.0, None, None)
    # Three runs a side that all beat the other three: every resample agrees, so the percentile
    # interval would be the point itself; none is given, and the reason names the runs.
    apart = probability_of_improvement([0.5, 0.6, 0.7], [0.1, 0.2, 0.3])
    assert (apart.p, apart.low, apart.high) == (1.0, None, None)
    assert "3 vs 3 runs" in apart.no_interval


def test_a_difference_is_judged_on_the_images_where_every_run_logged_them():
    first, second = outcomes_with((30, 10), 60)
    one = difference([record("gelu", 0, 0.9, correct=first)],
                     [record("relu", 0, 0.7, correct=second)], headline,
                     checkpoint=lambda r: r.headline_checkpoint)  # fmt: skip
    assert one.image.test == MCNEMAR and one.image.discordant == (30, 10)
    assert one.spread is None and one.seeds_needed is None  # no seed-to-seed spread
    rng = np.random.default_rng(0)
    value = [record("gelu", s, 0.71 + s / 100, correct=rng.random(100) < 0.7) for s in range(3)]
    reference = [record("relu", s, 0.70 + s / 200, correct=rng.random(100) < 0.7)
                 for s in range(3)]  # fmt: skip
    seeds = difference(value, reference, headline, checkpoint=lambda r: r.headline_checkpoint,
                       min_effect=0.005)  # fmt: skip
    assert seeds.image.test == TWO_LEVEL and seeds.improvement.low is not None
    assert seeds.target == pytest.approx(max(abs(seeds.mean), 0.005))
    assert seeds.seeds_needed == seeds_needed(seeds.target, seeds.spread, True, ALPHA)
    # Another test set (digest) on one run: no pairing at image level.
    other = [*value[:2], record("gelu", 2, 0.73, correct=first, digest="other")]
    assert difference(other, reference, headline,
                      checkpoint=lambda r: r.headline_checkpoint).image is None  # fmt: skip


def test_the_reference_is_chosen_on_validation_never_on_test():
    """Without relu, gelu (best validation, worst test) is the reference; without validation
    there is none."""
    runs = [record("gelu", 0, test=0.60, val=0.90), record("sigmoid", 0, test=0.95, val=0.50)]
    [comparison] = find_comparisons(group_configurations(runs), "activation")
    stats = comparison_stats(comparison)
    assert stats.reference.config["activation"] == "gelu" and "validation" in stats.chosen
    unvalidated = [record("gelu", 0, 0.60, val=None), record("sigmoid", 0, 0.95, val=None)]
    [comparison] = find_comparisons(group_configurations(unvalidated), "activation")
    none = comparison_stats(comparison)
    assert none.reference is None and none.differences == [] and "did not run" in none.chosen


def test_runs_with_different_init_are_different_configurations():
    runs = [record("relu", 0, 0.8), record("relu", 0, 0.7, init="torch-default")]
    configurations = group_configurations(runs)
    assert len(configurations) == 2
    [comparison] = find_comparisons(configurations, "init")
    assert isinstance(comparison, Comparison)
    assert comparison_stats(comparison).reference.config["init"] == "torch-default"


def _compare(experiment: str, out, *options: str) -> tuple[dict[str, dict], str, str]:
    result = CliRunner().invoke(cli, ["compare", "--experiment", experiment, "--output-dir",
                                      str(out), *options])  # fmt: skip
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(result.output.split("logged to run ")[1].split()[0])
    with open(out / "differences.csv", newline="") as f:
        rows = {row["value"]: row for row in csv.DictReader(f) if row["factor"] == "activation"}
    html = markup.unescape((out / "report.html").read_text())
    return rows, html, run.data.tags["mlflow.note.content"]


def test_compare_end_to_end_one_run_a_side_then_three_seeds(mlflow_server, tmp_path):
    """Synthetic runs that log per-image predictions (best and final) on a real server:
    McNemar with one run a side, then the paired bootstrap, P(A>B) and seeds needed."""
    experiment = f"paired-{uuid.uuid4().hex[:8]}"
    images = 2000
    with tracking_on(mlflow_server.uri) as env:
        correct = {}
        for number, (activation, accuracy) in enumerate((("relu", 0.70), ("gelu", 0.73))):
            for seed in range(3):
                c = fabricated_outcomes(accuracy, images, 10 * number + seed)
                correct[activation, seed] = c
                if seed == 0:
                    log_synthetic_run(experiment, activation=activation, seed=seed, val_size=100,
                                      outcomes={"best": c, "final": c})  # fmt: skip
        env.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment() exported it
        rows, html, description = _compare(experiment, tmp_path / "one")
        gelu, relu = correct["gelu", 0], correct["relu", 0]
        b, c = int(np.sum(gelu & ~relu)), int(np.sum(~gelu & relu))
        row = rows["gelu"]
        assert row["image_test"] == MCNEMAR and int(row["image_n"]) == images
        assert (int(row["discordant_value"]), int(row["discordant_reference"])) == (b, c)
        assert float(row["mcnemar_p"]) == pytest.approx(mcnemar(gelu, relu).p)
        assert row["floor"] == ""  # paired on the images: the single-accuracy floor is gone
        for text in (html, description):
            assert "McNemar p" in text and "P(A>B)" in text
            assert "seeds needed: unknown (one run on a side" in text

        for activation in ("relu", "gelu"):
            for seed in (1, 2):
                c = correct[activation, seed]
                log_synthetic_run(experiment, activation=activation, seed=seed, val_size=100,
                                  outcomes={"best": c, "final": c})  # fmt: skip
        rows, html, description = _compare(experiment, tmp_path / "three", "--min-effect", "1")
    row = rows["gelu"]
    assert row["image_test"] == TWO_LEVEL and row["resamples"] == "1000"
    assert float(row["image_ci_low"]) < float(row["image_mean"]) < float(row["image_ci_high"])
    image_mean = np.mean([correct["gelu", s].mean() - correct["relu", s].mean() for s in range(3)])
    assert float(row["image_mean"]) == pytest.approx(image_mean)
    assert row["p_improvement_low"] != "" and row["p_improvement_high"] != ""
    decided = row["p_holm"] != "" and float(row["p_holm"]) < ALPHA
    assert decided or float(row["seeds_needed_for"]) >= 0.01  # --min-effect 1 pp
    for text in (html, description):
        assert "paired bootstrap" in text and "P(A>B) = " in text
        assert decided or "needs " in text and "seeds per side" in text
    assert "P(A > B)" in html and "the test set chooses nothing" in html
