"""The study's published conclusions (a)-(i), each checked against the runs by a written rule.

A claim is a set of contrasts, "value A beats value B on a measure", within one comparison of
the study (for each factor, the comparison holding the values the claim needs with the most
runs; ties to the first). A contrast *holds* when its difference goes the claimed way and its
Holm-corrected p-value (stats.difference; Holm within the claim) is below ALPHA, and *fails*
when it goes the other way with such a p-value: the verdict rests on seeds, never on one pair of
runs, so McNemar's test on the images of two runs (paired.py) and P(A > B) are shown beside a
contrast but do not decide it. The verdict: *supported* when every contrast
holds, *contradicted* when one fails, *not enough evidence* otherwise (n = 1 gives no p-value),
*not run* when no comparison has the values. Claim (g) is a non-inferiority claim with its own
rule, stated beside it.

Measures (RunRecord properties, named so in the report):
- accuracy: the headline test accuracy (at the best-validation epoch, else final);
- final accuracy: test accuracy at the last epoch;
- epochs to 90%: the first epoch whose test accuracy reaches 90% of the run's final one (fewer
  is faster convergence);
- fluctuation: the standard deviation of epoch-to-epoch changes in test accuracy over the
  second half of training (smaller is smoother, more stable);
- seconds per epoch: the mean wall time of an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .paired import ImageBootstrap
from .stats import ALPHA, MIN_EFFECT, Difference, difference, with_holm
from .study import Comparison, Configuration, RunRecord, find_comparisons

SUPPORTED, CONTRADICTED, UNCLEAR, NOT_RUN = (
    "supported", "contradicted", "not enough evidence", "not run"
)  # fmt: skip
# (g): "about half the parameters" and "nearly the accuracy", as numbers.
HALF_PARAMS = (0.4, 0.6)  # Ghost's parameter count over ResNet-18's
NEARLY_PP = 2.0  # the accuracy Ghost may lose, in percentage points


@dataclass(frozen=True)
class Measure:
    name: str
    of: Callable[[RunRecord], float]
    scale: float  # to the unit shown
    unit: str
    # An accuracy: the checkpoint whose per-image outcomes it is measured on (and --min-effect
    # applies to it); None for the other measures.
    checkpoint: Callable[[RunRecord], str] | None = None


ACCURACY = Measure("accuracy", lambda r: r.headline, 100.0, "pp", lambda r: r.headline_checkpoint)
FINAL = Measure("final accuracy", lambda r: r.final_test_acc, 100.0, "pp", lambda r: "final")
SPEED = Measure("epochs to 90%", lambda r: r.epochs_to_90, 1.0, "epochs")
FLUCTUATION = Measure("fluctuation", lambda r: r.late_fluctuation, 100.0, "pp")
SECONDS = Measure("seconds per epoch", lambda r: r.seconds_per_epoch, 1.0, "s")


@dataclass(frozen=True)
class Contrast:
    """Claimed: measure(higher) > measure(lower)."""

    higher: str
    lower: str
    measure: Measure


@dataclass(frozen=True)
class Verdict:
    letter: str
    claim: str
    rule: str
    verdict: str
    evidence: list[str]  # one line per number the verdict rests on
    comparison: Comparison | None
    brief: list[str] = field(default_factory=list)  # the same, shorter (the run description)


@dataclass(frozen=True)
class Claim:
    letter: str
    text: str
    factor: str
    needs: tuple[str, ...]  # factor values that must have run (one of `any_of` too)
    any_of: tuple[str, ...]
    contrasts: Callable[[set[str]], list[Contrast]]  # from the values that ran
    rule: str
    lr: str | None = None  # the claim is about this learning rate (not a tuned one)


_RULE = f"each difference in the claimed direction with Holm-corrected p < {ALPHA:g}"
# How the verdicts are reached, said once in the report.
VERDICT_RULE = (
    f"A contrast holds when its mean difference over seeds goes the claimed way with a "
    f"Holm-corrected t-test p < {ALPHA:g} (Holm within the claim), and fails when it goes the "
    f"other way with such a p; a claim is supported when every contrast holds, contradicted "
    f"when one fails, otherwise not enough evidence. P(A > B) (the probability that a run of A "
    f"beats a run of B, over every pair of runs, ties half; 95% percentile bootstrap interval) "
    f"and the image-level evidence (McNemar's exact test with one run a side, a two-level "
    f"paired bootstrap with seeds) stand beside the numbers and do not change a verdict. Where "
    f"a contrast is undecided, 'needs ≈ N seeds per side' is what a t-test at α = {ALPHA:g} "
    f"(before Holm) would need for 80% power against the observed difference or the smallest "
    f"difference of interest (--min-effect, for accuracies), whichever is larger, at the "
    f"observed seed-to-seed spread."
)
ACTIVATIONS = ("relu", "leaky_relu", "gelu")
CLAIMS = (
    Claim("a", "Sigmoid is the worst activation.", "activation", ("sigmoid",), ACTIVATIONS,
          lambda ran: [Contrast(o, "sigmoid", ACCURACY) for o in ACTIVATIONS if o in ran],
          f"accuracy of each other activation > sigmoid's; {_RULE}"),
    Claim("b", "ReLU and LeakyReLU converge fast and stably.", "activation", ("sigmoid",),
          ("relu", "leaky_relu"),
          lambda ran: [Contrast("sigmoid", v, m) for v in ("relu", "leaky_relu") if v in ran
                       for m in (SPEED, FLUCTUATION)],
          f"relu's and leaky_relu's epochs to 90% and fluctuation < sigmoid's; {_RULE}"),
    Claim("c", "GELU's test-accuracy curve is smoother than ReLU's.", "activation",
          ("gelu", "relu"), (), lambda ran: [Contrast("relu", "gelu", FLUCTUATION)],
          f"gelu's fluctuation < relu's; {_RULE}"),
    Claim("d", "Adam at lr 0.01 oscillates and ends below SGD.", "optimizer", ("adam", "sgd"),
          (), lambda ran: [Contrast("adam", "sgd", FLUCTUATION), Contrast("sgd", "adam", FINAL)],
          f"at lr 0.01, adam's fluctuation > sgd's and its final accuracy < sgd's; {_RULE}",
          lr="0.01"),
    Claim("e", "SGD with momentum reaches the best final test accuracy of the three optimizers.",
          "optimizer", ("momentum",), ("sgd", "adam"),
          lambda ran: [Contrast("momentum", o, FINAL) for o in ("sgd", "adam") if o in ran],
          f"momentum's final accuracy > sgd's and adam's (those that ran); {_RULE}"),
    Claim("f", "Plain SGD converges slowest.", "optimizer", ("sgd",), ("momentum", "adam"),
          lambda ran: [Contrast("sgd", o, SPEED) for o in ("momentum", "adam") if o in ran],
          f"sgd's epochs to 90% > momentum's and adam's (those that ran); {_RULE}"),
    Claim("g", "Ghost-ResNet-18 keeps nearly the accuracy with about half the parameters.",
          "model", ("ghost_resnet18", "resnet18"), (), lambda ran: [],
          f"supported when ghost has {HALF_PARAMS[0]:.0%}-{HALF_PARAMS[1]:.0%} of resnet18's "
          f"parameters and the 95% CI of its accuracy difference lies above −{NEARLY_PP:g} pp; "
          f"contradicted when the ratio is outside that range or the CI lies below "
          f"−{NEARLY_PP:g} pp; otherwise not enough evidence"),
    Claim("h", "Ghost-ResNet-18 is slower per epoch.", "model", ("ghost_resnet18", "resnet18"),
          (), lambda ran: [Contrast("ghost_resnet18", "resnet18", SECONDS)],
          f"ghost's seconds per epoch > resnet18's (on the device the runs used); {_RULE}"),
    Claim("i", "Ghost-ResNet-18's test curve fluctuates less.", "model",
          ("ghost_resnet18", "resnet18"), (),
          lambda ran: [Contrast("resnet18", "ghost_resnet18", FLUCTUATION)],
          f"ghost's fluctuation < resnet18's; {_RULE}"),
)  # fmt: skip


def check_claims(configurations: list[Configuration], images: ImageBootstrap | None = None,
                 min_effect: float = MIN_EFFECT) -> list[Verdict]:  # fmt: skip
    images = images or ImageBootstrap()
    return [check(claim, configurations, images, min_effect) for claim in CLAIMS]


def _difference(higher: Configuration, lower: Configuration, measure: Measure,
                labels: tuple[str, str], images: ImageBootstrap | None,
                min_effect: float) -> Difference:  # fmt: skip
    return difference(higher.runs, lower.runs, measure.of, labels, measure.checkpoint, images,
                      min_effect if measure.checkpoint else 0.0)  # fmt: skip


def check(claim: Claim, configurations: list[Configuration],
          images: ImageBootstrap | None = None, min_effect: float = MIN_EFFECT) -> Verdict:
    comparison = _comparison_for(claim, configurations)
    if comparison is None:
        needs = " and ".join(claim.needs) + (
            f" with one of {', '.join(claim.any_of)}" if claim.any_of else ""
        )
        at = f" at lr {claim.lr}" if claim.lr else ""
        return Verdict(claim.letter, claim.text, claim.rule, NOT_RUN,
                       [f"no {claim.factor} comparison of {needs}{at}"], None)  # fmt: skip
    arms = _arms(comparison)
    if claim.letter == "g":
        return _check_ghost(claim, comparison, arms, images, min_effect)
    contrasts = claim.contrasts(set(arms))
    differences = with_holm([
        _difference(arms[c.higher], arms[c.lower], c.measure, (c.higher, c.lower), images,
                    min_effect)
        for c in contrasts
    ])  # fmt: skip
    holds = [_significant(d) and d.mean > 0 for d in differences]
    fails = [_significant(d) and d.mean < 0 for d in differences]
    verdict = CONTRADICTED if any(fails) else SUPPORTED if all(holds) else UNCLEAR
    evidence = [_evidence(c.measure, d) for c, d in zip(contrasts, differences)]
    brief = [_evidence(c.measure, d, short=True) for c, d in zip(contrasts, differences)]
    return Verdict(claim.letter, claim.text, claim.rule, verdict, evidence, comparison, brief)


def _check_ghost(claim: Claim, comparison: Comparison, arms: dict,
                 images: ImageBootstrap | None, min_effect: float) -> Verdict:  # fmt: skip
    ghost, resnet = arms["ghost_resnet18"], arms["resnet18"]
    [d] = with_holm([_difference(ghost, resnet, ACCURACY, ("ghost_resnet18", "resnet18"),
                                 images, min_effect)])  # fmt: skip
    evidence = [_evidence(ACCURACY, d)]
    if not (ghost.model_params and resnet.model_params):
        return Verdict(claim.letter, claim.text, claim.rule, UNCLEAR,
                       [*evidence, "parameter counts not logged"], comparison)  # fmt: skip
    ratio = ghost.model_params / resnet.model_params
    evidence.insert(0, f"parameters: {ghost.model_params:,} vs {resnet.model_params:,} "
                       f"(ratio {ratio:.2f})")  # fmt: skip
    margin = -NEARLY_PP / 100
    if not HALF_PARAMS[0] <= ratio <= HALF_PARAMS[1] or (d.high is not None and d.high < margin):
        verdict = CONTRADICTED
    elif d.low is not None and d.low > margin:
        verdict = SUPPORTED
    else:
        verdict = UNCLEAR
    return Verdict(claim.letter, claim.text, claim.rule, verdict, evidence, comparison, evidence)


def _significant(d: Difference) -> bool:
    return d.p_holm is not None and d.p_holm < ALPHA


def _evidence(measure: Measure, d: Difference, short: bool = False) -> str:
    numbers = describe_difference(d, measure.scale, measure.unit, short)
    return f"{measure.name}, {d.value} − {d.reference}: {numbers}"


def describe_difference(d: Difference, scale: float, unit: str, short: bool = False) -> str:
    """'+1.23 pp, 95% CI [0.40, 2.06], p = 0.012 (Holm), paired t-test by seed, n 3 vs 3', then
    the image-level evidence, P(A > B) and the seeds needed where undecided; short: '+1.23 pp
    [0.40, 2.06], p 0.012; …'."""
    if not math.isfinite(d.mean):
        return f"not measured (n {d.n})"
    text = f"{d.mean * scale:+.2f} {unit}"
    if d.low is None:
        text += ", n = 1" if short else f", no interval: n = 1 (n {d.n})"
    else:
        interval = f"[{d.low * scale:.2f}, {d.high * scale:.2f}]"
        if short:
            text += f" {interval}, p {'—' if d.p_holm is None else f'{d.p_holm:.2g}'}"
        else:
            p = "p undefined (no spread)" if d.p_holm is None else f"p = {d.p_holm:.3g} (Holm)"
            text += f", 95% CI {interval}, {p}, {d.test}, n {d.n}"
    return "; ".join([text, *extra_evidence(d, scale, unit, short)])


def extra_evidence(d: Difference, scale: float, unit: str, short: bool = False) -> list[str]:
    """The image-level evidence, P(A > B) and the seeds needed, as phrases."""
    parts = []
    if d.image:
        parts.append(image_text(d.image, scale, unit, short))
    if d.improvement:
        parts.append(improvement_text(d))
    if not d.decided:
        parts.append(needs_text(d, scale, unit))
    return parts


def image_text(e, scale: float, unit: str, short: bool = False) -> str:
    """'McNemar p = 0.003 (Holm) on 10000 images (41 vs 12 discordant)' or 'images: paired
    bootstrap 95% CI [0.11, 0.52] pp (1000 resamples, seeds then images)'."""
    if e.p is not None:
        p = e.p_holm if e.p_holm is not None else e.p
        if short:
            return f"McNemar p {p:.2g}"
        b, c = e.discordant
        return (f"McNemar p = {p:.3g} (Holm) on {e.n_images} images ({b} vs {c} discordant; "
                f"paired 95% CI [{e.low * scale:.2f}, {e.high * scale:.2f}] {unit})")  # fmt: skip
    interval = f"[{e.low * scale:.2f}, {e.high * scale:.2f}]"
    if short:
        return f"paired bootstrap {interval}"
    return (f"paired bootstrap 95% CI {interval} {unit} ({e.resamples} resamples, seeds then "
            f"{e.n_images} images)")  # fmt: skip


def improvement_text(d: Difference) -> str:
    """'P(A>B) = 0.89 [0.56, 1.00]'; without an interval: 'P(A>B) = 1.00 (why none)'."""
    i = d.improvement
    if i.low is None:
        return f"P(A>B) = {i.p:.2f} ({i.no_interval})"
    return f"P(A>B) = {i.p:.2f} [{i.low:.2f}, {i.high:.2f}]"


def needs_text(d: Difference, scale: float, unit: str) -> str:
    """'needs ≈ 9 seeds per side (for 0.50 pp)', or why it cannot be said."""
    if d.spread is None:
        return "seeds needed: unknown (one run on a side: no seed-to-seed spread)"
    if d.target is None:
        return "seeds needed: no difference observed to size"
    if d.seeds_needed is None:
        return f"needs > 1000 seeds per side (for {d.target * scale:.2f} {unit})"
    return f"needs ≈ {d.seeds_needed} seeds per side (for {d.target * scale:.2f} {unit})"


def _arms(comparison: Comparison) -> dict[str, Configuration]:
    """{factor value: configuration}; where a value has several (momentum 0.9 and 0.99), the
    one with the most runs."""
    arms: dict[str, Configuration] = {}
    for c in comparison.configurations:
        value = c.config[comparison.factor]
        if value not in arms or len(c.runs) > len(arms[value].runs):
            arms[value] = c
    return arms


def _comparison_for(claim: Claim, configurations: list[Configuration]) -> Comparison | None:
    fitting = []
    for comparison in find_comparisons(configurations, claim.factor):
        ran = set(_arms(comparison))
        if not set(claim.needs) <= ran or (claim.any_of and not ran & set(claim.any_of)):
            continue
        if claim.lr and (comparison.tuned or comparison.fixed.get("lr") != claim.lr):
            continue
        fitting.append(comparison)
    return max(fitting, key=lambda c: sum(len(x.runs) for x in c.configurations), default=None)
