"""The study's published conclusions (a)-(i), each checked against the runs by a written rule.

A claim is a set of contrasts, "value A beats value B on a measure", within one comparison of
the study (for each factor, the comparison holding the values the claim needs with the most
runs; ties to the first). A contrast *holds* when its difference goes the claimed way and its
Holm-corrected p-value (stats.difference; Holm within the claim) is below ALPHA, and *fails*
when it goes the other way with such a p-value. The verdict: *supported* when every contrast
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

from .stats import ALPHA, Difference, difference, with_holm
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


ACCURACY = Measure("accuracy", lambda r: r.headline, 100.0, "pp")
FINAL = Measure("final accuracy", lambda r: r.final_test_acc, 100.0, "pp")
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


def check_claims(configurations: list[Configuration]) -> list[Verdict]:
    return [check(claim, configurations) for claim in CLAIMS]


def check(claim: Claim, configurations: list[Configuration]) -> Verdict:
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
        return _check_ghost(claim, comparison, arms)
    contrasts = claim.contrasts(set(arms))
    differences = with_holm([
        difference(arms[c.higher].runs, arms[c.lower].runs, c.measure.of, (c.higher, c.lower))
        for c in contrasts
    ])  # fmt: skip
    holds = [_significant(d) and d.mean > 0 for d in differences]
    fails = [_significant(d) and d.mean < 0 for d in differences]
    verdict = CONTRADICTED if any(fails) else SUPPORTED if all(holds) else UNCLEAR
    evidence = [_evidence(c.measure, d) for c, d in zip(contrasts, differences)]
    brief = [_evidence(c.measure, d, short=True) for c, d in zip(contrasts, differences)]
    return Verdict(claim.letter, claim.text, claim.rule, verdict, evidence, comparison, brief)


def _check_ghost(claim: Claim, comparison: Comparison, arms: dict) -> Verdict:
    ghost, resnet = arms["ghost_resnet18"], arms["resnet18"]
    [d] = with_holm(
        [difference(ghost.runs, resnet.runs, ACCURACY.of, ("ghost_resnet18", "resnet18"))]
    )
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
    """'+1.23 pp, 95% CI [0.40, 2.06], p = 0.012 (Holm), paired t-test by seed, n 3 vs 3';
    short: '+1.23 pp [0.40, 2.06], p 0.012'."""
    if not math.isfinite(d.mean):
        return f"not measured (n {d.n})"
    text = f"{d.mean * scale:+.2f} {unit}"
    if d.low is None:
        return f"{text}, n = 1" if short else f"{text}, no interval: n = 1 (n {d.n})"
    interval = f"[{d.low * scale:.2f}, {d.high * scale:.2f}]"
    if short:
        return f"{text} {interval}, p {'—' if d.p_holm is None else f'{d.p_holm:.2g}'}"
    p = "p undefined (no spread)" if d.p_holm is None else f"p = {d.p_holm:.3g} (Holm)"
    return f"{text}, 95% CI {interval}, {p}, {d.test}, n {d.n}"


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
