"""Soundness of the symbolic-equivalence keys (DESIGN §1.5.1), checked numerically.

Thousands of expressions from the project's own GP (init_population and two bred generations per
seed, as the pipeline makes them) are keyed; then
  * every pair of distinct expressions that share a key must agree in value and in d/df, and
  * every expression must compute the function its key denotes (the key text is evaluated as a
    formula), which covers pairs the sample happens not to contain,
at one-hot / softmax points and at regression points with exact zeros, ties, +-1, values below the
clamp 1e-7, small and large (evomal.gp.soundness.check_points). Float64 first, relative 1e-9; a
disagreement is only counted if exact-real arithmetic confirms it (rounding is not unsoundness).

The work is bounded by counts (number of expressions and points), never by a clock. The last test
re-introduces an unsound rule and checks that this file would catch it.
"""
import pytest
import sympy as sp

from evomal.gp import algebra, canonical, rules
from evomal.gp.canonical import canonical_key
from evomal.gp.soundness import (
    check_points,
    find_disagreements,
    find_key_disagreements,
    group_by_key,
    sample_expressions,
)

N_EXPRESSIONS = 5250  # 70 seeds x 3 generations x population 25


def _clear_caches():
    canonical._cached_key.cache_clear()
    rules._MEMO.forms.clear()


@pytest.fixture(scope="module")
def sample():
    expressions = sample_expressions(N_EXPRESSIONS)
    keys = {e: canonical_key(e).key for e in dict.fromkeys(expressions)}
    return expressions, keys, group_by_key(expressions, keys.__getitem__)


def _report(found, limit=8):
    return "\n".join(f"{d.key}\n  {d.a}\n  {d.b}\n  at y={d.y!r}, f={d.f!r}: (value, value, d/df, d/df) = {d.values}"
                     for d in found[:limit])


def test_the_sample_is_large_and_gives_the_keys_something_to_merge(sample):
    expressions, keys, groups = sample
    assert len(expressions) >= 5000
    assert len(keys) >= 3000  # distinct strings
    merged = [g for g in groups.values() if len(g) >= 2]
    assert len(merged) >= 200  # groups of distinct strings sharing a key: pairs to check
    assert sum(len(g) for g in merged) >= 500
    assert sum(k.startswith("sympy:") for k in keys.values()) >= 0.95 * len(keys)


def test_points_cover_one_hot_softmax_and_regression_edge_cases():
    ys, fs = check_points()
    pairs = set(zip(ys, fs))
    assert len(ys) >= 250
    assert {0.0, 1.0} <= set(ys) and any(0 < f < 1e-7 for f in fs)  # one-hot, softmax below the clamp
    for y, f in [(0.0, 0.0), (1.0, 1.0), (-1.0, 1.0), (0.0, 1e-8), (1e3, -1e3), (1e-4, 0.0)]:
        assert (y, f) in pairs


def test_expressions_sharing_a_key_compute_the_same_values_and_gradients(sample):
    _, _, groups = sample
    found = find_disagreements(groups)
    assert not found, f"{len(found)} key-equal pairs differ:\n{_report(found)}"


def test_every_expression_computes_what_its_key_denotes(sample):
    _, keys, _ = sample
    found = find_key_disagreements(keys)
    assert not found, f"{len(found)} expressions differ from their key:\n{_report(found)}"


@pytest.fixture
def fresh_caches():
    _clear_caches()
    yield
    _clear_caches()


def test_an_unsound_rule_is_caught(monkeypatch, fresh_caches):
    # sign(|a|) -> 1 (sign(0) is 0, and one-hot targets are mostly 0): the old filter's mistake.
    original = rules._sign_power

    def unsound(base, e):
        return sp.Integer(1) if base.func is algebra.pabs else original(base, e)

    monkeypatch.setattr(rules, "_sign_power", unsound)
    expressions = sample_expressions(1500)
    keys = {e: canonical_key(e).key for e in dict.fromkeys(expressions)}
    assert find_disagreements(group_by_key(expressions, keys.__getitem__))
    assert find_key_disagreements(keys)
