"""Filters: the rejection protocol and gradient signatures."""
from __future__ import annotations

import json
import math

import pytest

from evomal.gp.expressions import parse
from evomal.learning.filters import gradient_signature, rejection_test, signature_is_valid, signatures_match
from evomal.tasks.models import build_model

CE = "mul(-1, mul(y, log(f)))"
#: Pushes every class probability towards 1/C but holds the true class just below the others: the
#: cross-entropy of untrained predictions falls (towards 2.320 for 10 classes), yet every sample ends
#: misclassified (error rate 1). The task metric rejects it, the task loss accepts it.
LOWERS_CE_RAISES_ERROR = "sub(mul(y, square(f)), log(f))"


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


def test_rejection_protocol_decides_on_the_task_metric_by_default(digits):
    """DESIGN §1.5 (2): the error rate, not the cross-entropy, must improve; task_loss is the option."""
    by_metric, by_loss = run(LOWERS_CE_RAISES_ERROR, digits), run(LOWERS_CE_RAISES_ERROR, digits, measure="task_loss")
    assert by_metric.measure == "metric" and by_loss.measure == "task_loss"
    assert not by_metric.accepted and by_metric.after == 1.0 and by_metric.before < 0.95
    assert by_metric.improvement == pytest.approx(by_metric.before - 1.0)
    assert (f"does not improve the task metric: task metric (error rate) {by_metric.before:.6g} -> 1 "
            in by_metric.reason), by_metric.reason
    assert by_loss.accepted and by_loss.after < by_loss.before - 0.01
    assert by_loss.reason.startswith(f"accepted: task loss (cross-entropy) {by_loss.before:.6g} -> "
                                     f"{by_loss.after:.6g}"), by_loss.reason
    ce = run(CE, digits)
    assert ce.accepted and ce.after == 0.0 and "task metric (error rate)" in ce.reason


def test_rejection_measures_agree_for_regression_and_unknown_ones_fail(digits, diabetes):
    a, b = run("square(sub(y, f))", diabetes), run("square(sub(y, f))", diabetes, measure="task_loss")
    assert a.accepted and b.accepted and (a.before, a.after) == pytest.approx((b.before, b.after))
    assert "task metric (MSE)" in a.reason and "task loss (MSE)" in b.reason
    with pytest.raises(ValueError, match=r"unknown rejection measure 'error'; known: metric, task_loss"):
        run(CE, digits, measure="error")


@pytest.mark.parametrize("measure,decision", [("metric", "rejected"), ("task_loss", "evaluate")])
def test_filter_stage_uses_the_configured_rejection_measure(tmp_path, measure, decision):
    from evomal.pipeline.config import resolve_config
    from evomal.pipeline.filtering import filter_population
    from workflow_utils import tiny_config

    config = tiny_config(training={"lr": 0.01}, filters={"rejection_steps": 100, "rejection_samples": 100,
                                                         "gradient": False, "rejection_measure": measure})
    exp = resolve_config(config)["experiments"]["tiny"]
    assert exp["filters"]["rejection_measure"] == measure  # part of the filter rule's params
    population = tmp_path / "population.json"
    population.write_text(json.dumps({"generation": 0, "individuals": [
        {"id": "g0-0", "expression": LOWERS_CE_RAISES_ERROR, "parents": [], "origin": "init"},
        {"id": "g0-1", "expression": CE, "parents": [], "origin": "init"}]}))
    filter_population(population, tmp_path / "filter.json", exp=exp, shards=1)
    odd, ce = json.loads((tmp_path / "filter.json").read_text())["candidates"]
    assert (odd["decision"], ce["decision"]) == (decision, "evaluate")
    assert odd["rejection_measure"] == ce["rejection_measure"] == measure
    if measure == "metric":
        assert "task metric (error rate)" in odd["reason"] and odd["rejection_improvement"] < 0
    else:
        assert odd["reason"] == "new loss" and odd["rejection_improvement"] > 0


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
