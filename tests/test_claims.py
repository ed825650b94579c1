"""The study's claims (compare/claims.py), each rule on fabricated runs that make it supported,
contradicted and unclear: pure functions, no server."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from cifar_mlflow.compare.claims import (
    CLAIMS,
    CONTRADICTED,
    NOT_RUN,
    SUPPORTED,
    UNCLEAR,
    check,
    check_claims,
)  # fmt: skip
from cifar_mlflow.compare.study import Curve, RunRecord, group_configurations

EPOCHS = 12
FACTOR = {"a": "activation", "b": "activation", "c": "activation", "d": "optimizer",
          "e": "optimizer", "f": "optimizer", "g": "model", "h": "model", "i": "model"}  # fmt: skip
PARAMS = {"resnet18": 11173962, "ghost_resnet18": 5706186}


def fabricated(factor: str, value: str, seed: int, level: float = 0.6, tau: float = 1.5,
               wiggle: float = 0.002, seconds: float = 30.0) -> RunRecord:  # fmt: skip
    """A run whose test accuracy rises to about `level` with time constant `tau` epochs and
    zig-zags by `wiggle` over its second half; a little noise per value and seed."""
    rng = np.random.default_rng(zlib.crc32(f"{value}-{seed}".encode()))
    epochs = np.arange(1, EPOCHS + 1)
    tau = tau * (1 + 0.1 * seed)
    zigzag = wiggle * (1 + 0.3 * rng.random()) * (-1.0) ** epochs * (epochs > EPOCHS / 2)
    acc = (level + rng.uniform(-0.004, 0.004)) * (1 - np.exp(-epochs / tau)) + zigzag
    config = {"model": "resnet18", "activation": "relu", "optimizer": "sgd", "lr": "0.01",
              "epochs": str(EPOCHS), factor: value}  # fmt: skip
    history = {"test_acc": Curve(epochs, acc),
               "epoch_seconds": Curve(epochs, np.full(EPOCHS, seconds + rng.uniform(0, 1)))}  # fmt: skip
    return RunRecord(f"{value}-{seed}", f"{value}-{seed}", config, seed,
                     PARAMS.get(config["model"]), history)  # fmt: skip


def arms(factor: str, **values: dict) -> list[RunRecord]:
    """Runs of each factor value: three seeds, or `seeds` as given."""
    return [fabricated(factor, value, seed, **{k: v for k, v in kw.items() if k != "seeds"})
            for value, kw in values.items() for seed in kw.get("seeds", (0, 1, 2))]  # fmt: skip


ONE = {"seeds": (0,)}
SCENARIOS = {
    "a": {SUPPORTED: {"relu": {}, "gelu": {}, "sigmoid": {"level": 0.3}},
          CONTRADICTED: {"relu": {}, "sigmoid": {"level": 0.7}},
          UNCLEAR: {"relu": {}, "sigmoid": {"level": 0.3, **ONE}}},
    "b": {SUPPORTED: {"relu": {}, "leaky_relu": {}, "sigmoid": {"tau": 5, "wiggle": 0.03}},
          CONTRADICTED: {"relu": {"tau": 5, "wiggle": 0.03}, "sigmoid": {}},
          UNCLEAR: {"relu": {}, "sigmoid": {"tau": 5, "wiggle": 0.03, **ONE}}},
    "c": {SUPPORTED: {"relu": {"wiggle": 0.03}, "gelu": {}},
          CONTRADICTED: {"relu": {}, "gelu": {"wiggle": 0.03}},
          UNCLEAR: {"relu": {"wiggle": 0.01}, "gelu": {"wiggle": 0.01}}},
    "d": {SUPPORTED: {"sgd": {}, "adam": {"level": 0.5, "wiggle": 0.03}},
          CONTRADICTED: {"sgd": {}, "adam": {"level": 0.7, "wiggle": 0.03}},
          UNCLEAR: {"sgd": {}, "adam": {"level": 0.5, "wiggle": 0.03, **ONE}}},
    "e": {SUPPORTED: {"sgd": {}, "momentum": {"level": 0.7}, "adam": {"level": 0.5}},
          CONTRADICTED: {"sgd": {}, "momentum": {"level": 0.5}},
          UNCLEAR: {"sgd": {}, "momentum": {"level": 0.7, **ONE}}},
    "f": {SUPPORTED: {"sgd": {"tau": 5}, "momentum": {}, "adam": {}},
          CONTRADICTED: {"sgd": {}, "momentum": {"tau": 5}},
          UNCLEAR: {"sgd": {"tau": 5, **ONE}, "momentum": {}}},
    "g": {SUPPORTED: {"resnet18": {}, "ghost_resnet18": {}},
          CONTRADICTED: {"resnet18": {}, "ghost_resnet18": {"level": 0.4}},
          UNCLEAR: {"resnet18": {}, "ghost_resnet18": ONE}},
    "h": {SUPPORTED: {"resnet18": {}, "ghost_resnet18": {"seconds": 40}},
          CONTRADICTED: {"resnet18": {}, "ghost_resnet18": {"seconds": 20}},
          UNCLEAR: {"resnet18": {}, "ghost_resnet18": {"seconds": 40, **ONE}}},
    "i": {SUPPORTED: {"resnet18": {"wiggle": 0.03}, "ghost_resnet18": {}},
          CONTRADICTED: {"resnet18": {}, "ghost_resnet18": {"wiggle": 0.03}},
          UNCLEAR: {"resnet18": {"wiggle": 0.03}, "ghost_resnet18": ONE}},
}  # fmt: skip


@pytest.mark.parametrize("letter, expected", [(c.letter, v) for c in CLAIMS
                                              for v in (SUPPORTED, CONTRADICTED, UNCLEAR)])  # fmt: skip
def test_each_claim_rule_on_fabricated_runs(letter, expected):
    [claim] = [c for c in CLAIMS if c.letter == letter]
    runs = arms(FACTOR[letter], **SCENARIOS[letter][expected])
    verdict = check(claim, group_configurations(runs))
    assert verdict.verdict == expected, verdict.evidence
    assert verdict.evidence and verdict.rule and verdict.comparison is not None
    if expected == UNCLEAR and letter not in "c":
        assert any("n = 1" in line for line in verdict.evidence), verdict.evidence


def test_claims_whose_comparison_did_not_run_say_so():
    runs = arms("activation", relu={}, gelu={})  # no sigmoid, no optimizer or model comparison
    verdicts = {v.letter: v for v in check_claims(group_configurations(runs))}
    assert {k for k, v in verdicts.items() if v.verdict == NOT_RUN} == set("abdefghi")
    expected = "no activation comparison of sigmoid with one of relu, leaky_relu, gelu"
    assert verdicts["a"].evidence == [expected]


def test_adam_claim_is_about_lr_0_01_only():
    runs = [fabricated("optimizer", o, s) for o in ("sgd", "adam") for s in (0, 1)]
    at_other_lr = [RunRecord(r.run_id, r.name, {**r.config, "lr": "0.1"}, r.seed, r.model_params,
                             r.history) for r in runs]  # fmt: skip
    [claim] = [c for c in CLAIMS if c.letter == "d"]
    assert check(claim, group_configurations(at_other_lr)).verdict == NOT_RUN
