"""Filters: the rejection protocol and gradient signatures."""
from __future__ import annotations

import math

import pytest

from evomal.gp.expressions import parse
from evomal.learning.filters import gradient_signature, rejection_test, signature_is_valid, signatures_match
from evomal.tasks.models import build_model

CE = "mul(-1, mul(y, log(f)))"





def run(expression, task, **kw):
    model = build_model("mlp", task.input_shape, task.num_outputs, seed=0, hidden=[32])
    return rejection_test(parse(expression), task, model, lr=0.01, seed=0, **kw)


@pytest.mark.parametrize("expression,why", [
    ("mul(y, f)", "does not improve"),     # maximises the wrong class probabilities
    ("mul(y, y)", "does not depend"),      # no prediction at all
    ("add(y, f)", "does not improve"),     # sum_c softmax = 1: a zero gradient up to rounding
    ("sub(f, y)", "does not improve"),
])
def test_rejection_protocol_rejects_losses_that_cannot_train(digits, expression, why):
    r = run(expression, digits)
    assert not r.accepted and why in r.reason and r.improvement <= 1e-6
    assert f"{r.before:.6g}" in r.reason or "does not depend" in r.reason


def test_rejection_protocol_accepts_cross_entropy_and_squared_error(digits, diabetes):
    r = run(CE, digits)
    assert r.accepted and r.improvement > 0.1 and r.after < r.before and "accepted" in r.reason
    r = run("square(sub(y, f))", diabetes)
    assert r.accepted and r.improvement > 0


def test_rejection_protocol_is_deterministic_and_rejects_non_finite(digits, diabetes):
    a, b = run(CE, digits, samples=50, steps=20), run(CE, digits, samples=50, steps=20)
    assert a == b
    overflow = "add(f, add(y, add(1, 1)))"  # (f + y + 2) ** 1024 overflows float64
    for _ in range(10):
        overflow = f"square({overflow})"
    r = run(overflow, diabetes, steps=5)
    assert not r.accepted and "non-finite" in r.reason


def test_gradient_signature_matches_equivalent_losses_only():
    sig = lambda e, kind="classification": gradient_signature(parse(e), kind, 10, seed=0)  # noqa: E731
    ce = sig(CE)
    assert len(ce) == 32 and signature_is_valid(ce) and ce == sig(CE)
    assert signatures_match(ce, sig("mul(y, mul(-1, log(f)))"), 1e-9)   # same loss, other order
    assert signatures_match(ce, sig("sub(mul(y, log(f)), mul(mul(y, log(f)), add(1, 1)))"), 1e-9)
    assert not signatures_match(ce, sig("mul(y, f)"), 1e-3)
    assert not signatures_match(ce, gradient_signature(parse(CE), "classification", 10, seed=1), 1e-3)
    mse = sig("square(sub(y, f))", "regression")
    assert len(mse) == 32 and signatures_match(mse, sig("square(sub(f, y))", "regression"), 1e-12)


def test_non_finite_gradient_signature_is_marked_and_never_matches():
    deep = "add(f, y)"
    for _ in range(11):
        deep = f"square({deep})"
    bad = gradient_signature(parse(deep), "regression", 1, seed=0)
    assert bad == [] and not signature_is_valid(bad)
    assert not signatures_match(bad, bad, 1.0)


def test_signatures_match_tolerance_is_absolute_below_one_and_relative_above():
    assert signatures_match([0.5, 100.0], [0.5 + 9e-4, 100.0 + 0.09], 1e-3)
    assert not signatures_match([0.5], [0.5 + 2e-3], 1e-3)
    assert not signatures_match([100.0], [100.2], 1e-3)
    assert not signatures_match([1.0, 2.0], [1.0], 1.0)
    assert not signatures_match([math.nan], [math.nan], 1.0)
