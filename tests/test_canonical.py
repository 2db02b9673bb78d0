"""Canonical keys: algebraically equal losses share a key, different ones do not, deterministically."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evomal.gp import rules
from evomal.gp.canonical import DEFAULT_BUDGET, CanonicalKey, canonical_key, expansion_work, structural_key
from evomal.gp.expressions import parse
from evomal.gp.soundness import find_disagreements

EQUAL = [
    ("add(y, f)", "add(f, y)"),
    ("sub(y, f)", "add(y, mul(-1, f))"),
    ("square(sub(y, f))", "square(sub(f, y))"),
    ("mul(y, log(f))", "mul(log(f), y)"),
    ("abs(sub(f, y))", "abs(sub(y, f))"),
    ("mul(y, y)", "square(y)"),
    ("square(sub(y, f))", "add(sub(square(y), mul(add(y, y), f)), square(f))"),
    ("abs(mul(y, f))", "mul(abs(y), abs(f))"),
    ("min(y, f)", "min(f, y)"),
    ("max(y, f)", "max(f, y)"),
    ("max(sub(y, f), y)", "max(y, add(y, mul(-1, f)))"),
    ("tanh(sub(f, y))", "mul(-1, tanh(sub(y, f)))"),
    ("sign(mul(y, f))", "mul(sign(f), sign(y))"),
    ("sign(sub(f, y))", "mul(-1, sign(sub(y, f)))"),
    ("mul(aq(y, f), sqrt(add(1, square(f))))", "mul(y, 1)"),
    ("sub(mul(y, f), mul(f, y))", "sub(y, y)"),
    ("square(abs(sub(y, f)))", "square(sub(f, y))"),
    ("mul(add(y, f), sub(y, f))", "sub(square(y), square(f))"),
    ("aq(y, sub(y, f))", "aq(y, sub(f, y))"),
    ("aq(aq(y, f), f)", "mul(y, aq(aq(1, f), f))"),
    ("add(y, y)", "mul(add(1, 1), y)"),
    ("add(mul(-1, mul(-1, y)), f)", "add(y, f)"),
    ("abs(mul(-1, sub(y, f)))", "abs(sub(f, y))"),
    ("sqrt(abs(mul(y, f)))", "sqrt(mul(y, f))"),
    ("sub(add(y, f), f)", "mul(y, 1)"),
    # exact under the protected semantics:
    ("log(sqrt(mul(y, f)))", "mul(square(aq(1, 1)), log(mul(f, y)))"),  # psqrt >= sqrt(1e-7) > 1e-7
    ("log(add(sqrt(y), sqrt(y)))", "add(log(add(1, 1)), log(sqrt(y)))"),  # 2 psqrt(y) >= 1e-7
    ("sqrt(sqrt(y))", "sqrt(sqrt(abs(y)))"),
    ("sign(mul(y, y))", "sign(abs(y))"),  # both sign(y)^2: 0 at y = 0
    ("sign(sqrt(y))", "sign(add(1, square(f)))"),  # strictly positive: 1
    ("sign(tanh(sub(y, f)))", "sign(sub(y, f))"),
    ("abs(tanh(sub(y, f)))", "tanh(abs(sub(f, y)))"),
    ("sign(aq(y, f))", "sign(y)"),
    ("max(abs(f), mul(-1, square(y)))", "abs(f)"),  # a >= b, and at a tie both have gradient 0
    ("min(y, add(y, square(f)))", "y"),
    ("mul(sign(y), mul(sign(y), sign(y)))", "sign(y)"),
    ("mul(abs(f), abs(f))", "square(f)"),
    ("log(sub(y, y))", "log(sub(f, f))"),  # the protected log(0) = log(1e-7)
    ("sqrt(sub(y, y))", "sqrt(mul(sub(f, f), f))"),  # sqrt(1e-7), not 0
    ("sign(min(abs(add(y, f)), log(1)))", "sub(y, y)"),  # min(|.|, 0) = 0
    ("log(-1)", "log(1)"),
    ("square(abs(tanh(aq(y, f))))", "square(tanh(aq(y, f)))"),
    ("sign(max(1, aq(y, f)))", "sign(sqrt(f))"),  # max(1, .) >= 1
    ("abs(min(-1, y))", "mul(-1, min(-1, y))"),  # min(-1, .) <= -1
    ("mul(sign(abs(f)), square(mul(y, f)))", "square(mul(y, f))"),  # sign(f)^2 f^2 = f^2, gradient too
    ("mul(sign(f), mul(sign(f), abs(f)))", "abs(f)"),
    ("log(square(sqrt(f)))", "log(f)"),  # sqrt(f)^2 = max(|f|, 1e-7)
    ("sqrt(square(sqrt(add(y, f))))", "sqrt(add(f, y))"),
    # a protected log(0) inside: both are tanh(f^2) + (f + y) / sqrt(1 + (log(1e-7) - f)^2)
    ("add(tanh(abs(square(f))), aq(add(f, y), sub(log(aq(log(-1), sqrt(1))), mul(1, f))))",
     "add(tanh(square(f)), aq(add(y, f), sub(log(sub(y, y)), f)))"),
]

# Equal almost everywhere but not under the protected semantics, so they must NOT share a key (a false
# merge loses a loss). Each comment says where they differ; test_not_merged_pairs_really_differ checks it.
NOT_MERGED = [
    # log|ab| = log|a| + log|b| fails where a factor is below the clamp: y = 0 with one-hot targets
    ("log(mul(y, f))", "add(log(y), log(f))"),
    ("log(square(y))", "add(log(y), log(y))"),  # |y| < 3.2e-4: log(max(y^2, eps)) != 2 log(max(|y|, eps))
    ("log(abs(mul(-1, mul(y, f))))", "add(log(f), log(y))"),
    ("log(add(mul(y, f), y))", "add(log(y), log(add(f, 1)))"),
    ("log(sqrt(mul(y, f)))", "mul(mul(aq(1, 1), aq(1, 1)), add(log(y), log(f)))"),
    ("log(aq(y, f))", "sub(log(y), log(sqrt(add(1, square(f)))))"),
    # sqrt(max(|a|, 1e-7)) is not |a| for |a| < 3.2e-4, nor a product of square roots
    ("sqrt(square(f))", "abs(f)"),
    ("sqrt(mul(y, f))", "mul(sqrt(y), sqrt(f))"),
    ("square(sqrt(sub(y, f)))", "abs(sub(y, f))"),  # max(|y - f|, 1e-7)
    ("sqrt(sub(y, y))", "sub(y, y)"),  # sqrt(0) is sqrt(1e-7) = 3.2e-4
    # sign(0) = 0: sign of a non-negative value is not 1
    ("mul(-1, mul(sign(abs(y)), log(f)))", "mul(-1, log(f))"),  # cross-entropy vs -log(f)
    ("sign(square(y))", "sign(sqrt(y))"),
    ("sign(min(abs(add(y, f)), log(1)))", "sign(sqrt(f))"),  # identically 0, not 1
    ("mul(sign(f), abs(f))", "f"),  # same values, but the gradient is sign(f)^2: 0 at f = 0, not 1
    ("mul(sign(f), mul(sign(f), f))", "f"),  # likewise
    # a protected log(0) inside a subtree that the unprotected algebra would absorb
    ("add(tanh(abs(square(f))), aq(add(f, y), sub(log(aq(log(-1), sqrt(1))), mul(1, f))))", "tanh(square(f))"),
    # a - b = max(f, 0) >= 0, but at the tie f = 0 max splits the gradient: 1/4, against 1/2
    ("max(add(y, max(f, sub(f, f))), y)", "add(y, max(f, sub(f, f)))"),
]

# Different functions, many of them near misses of each other.
DIFFERENT = [
    ("sub(y, f)", "sub(f, y)"),
    ("log(y)", "sqrt(y)"),
    ("min(y, f)", "max(y, f)"),
    ("add(y, f)", "mul(y, f)"),
    ("square(y)", "abs(y)"),
    ("aq(y, f)", "aq(f, y)"),
    ("tanh(y)", "sign(y)"),
    ("sqrt(square(f))", "f"),
    ("abs(sub(y, f))", "sub(y, f)"),
    ("log(mul(y, f))", "mul(log(y), log(f))"),
    ("square(add(y, f))", "add(square(y), square(f))"),
    ("min(y, add(y, f))", "min(y, sub(y, f))"),
    ("max(y, f)", "add(y, f)"),
    ("sign(mul(y, f))", "mul(y, f)"),
    ("tanh(sub(y, f))", "tanh(sub(f, y))"),
    ("add(y, y)", "y"),  # constant factors count: the archive compares unweighted expressions
    ("sub(y, -1)", "sub(y, 1)"),
    ("log(abs(y))", "abs(log(y))"),
    ("sqrt(sqrt(y))", "sqrt(y)"),
    ("aq(y, f)", "mul(y, f)"),
    ("square(sub(y, f))", "abs(sub(y, f))"),
    ("mul(y, log(f))", "mul(f, log(y))"),
    ("log(add(y, f))", "add(log(y), log(f))"),
    ("sqrt(add(y, f))", "add(sqrt(y), sqrt(f))"),
    ("aq(y, f)", "aq(y, mul(f, f))"),
    ("log(mul(y, f))", "log(mul(y, sub(f, 1)))"),
] + NOT_MERGED


@pytest.mark.parametrize("a, b", EQUAL)
def test_equal_losses_share_a_key(a, b):
    ka, kb = canonical_key(a), canonical_key(b)
    assert ka == kb, (ka, kb)
    assert ka.method == "sympy"


@pytest.mark.parametrize("a, b", EQUAL)
def test_equal_pairs_really_agree(a, b):
    # values and d/df at one-hot/softmax and regression points (zeros, ties, below the clamp)
    assert find_disagreements({"k": [a, b]}) == []


@pytest.mark.parametrize("a, b", NOT_MERGED)
def test_not_merged_pairs_really_differ(a, b):
    assert find_disagreements({"k": [a, b]}), "the pair agrees everywhere: move it to EQUAL"


@pytest.mark.parametrize("a, b", DIFFERENT)
def test_different_losses_have_different_keys(a, b):
    assert canonical_key(a).key != canonical_key(b).key


def test_enough_pairs():
    assert len(EQUAL) >= 20 and len(DIFFERENT) >= 20 and len(NOT_MERGED) >= 10


def test_all_different_functions_get_distinct_keys():
    # Every expression in DIFFERENT, less those equal to another one listed: log(abs(y)) = log(y),
    # sub(y, y) = sign(min(abs(add(y, f)), log(1))) = 0, sign(sqrt(f)) = sign(sqrt(y)) = 1, and
    # arguments reordered or negated.
    equal_to_another = {"log(abs(y))", "sub(y, y)", "sign(sqrt(f))", "add(log(f), log(y))",
                        "log(abs(mul(-1, mul(y, f))))"}
    distinct = sorted({e for pair in DIFFERENT for e in pair} - equal_to_another)
    keys = {}
    for e in distinct:
        keys.setdefault(canonical_key(e).key, []).append(e)
    assert [g for g in keys.values() if len(g) > 1] == []


def test_logs_of_products_are_kept_whole():
    # At y = 0 (one-hot targets) the protected forms of these two differ; see evomal.gp.rules.
    assert canonical_key("log(mul(y, f))") != canonical_key("add(log(y), log(f))")
    assert canonical_key("log(mul(y, f))") == canonical_key("log(mul(f, y))") == canonical_key(
        "log(abs(mul(-1, mul(f, y))))")


def test_issue_examples():
    # cross-entropy is not -log(f): sign(|y|) is 0 where the one-hot y is 0
    ce = canonical_key("mul(-1, mul(sign(abs(y)), log(f)))")
    assert ce != canonical_key("mul(-1, log(f))")
    assert ce == canonical_key("mul(-1, mul(sign(square(y)), log(f)))")
    # identically 0, not 1
    assert canonical_key("sign(min(abs(add(y, f)), log(1)))").key == "sympy:0"
    # a protected log(0) inside a subtree is log(1e-7), a constant, not an infinity to absorb
    nested = canonical_key("add(tanh(abs(square(f))), aq(add(f, y), sub(log(aq(log(-1), sqrt(1))), mul(1, f))))")
    assert nested != canonical_key("tanh(square(f))") and "log(eps)" in nested.key
    # sqrt(0) is sqrt(1e-7); sqrt(x^2) is not |x|
    assert canonical_key("sqrt(sub(y, y))").key == "sympy:sqrt(eps)"
    assert canonical_key("sqrt(square(f))") != canonical_key("abs(f)")


def test_accepts_nodes_and_text_alike():
    assert canonical_key(parse("add(y, f)")) == canonical_key("add( f ,y )")
    assert isinstance(canonical_key("y"), CanonicalKey)


def test_over_budget_falls_back_to_structural_key():
    key = canonical_key("add(y, f)", budget=0)
    assert key.method == "structural" and key.key.startswith("tree:")
    assert key == canonical_key("add(f, y)", budget=0)
    assert key != canonical_key("add(y, f)")  # namespaces never collide


def test_structural_key_sorts_commutative_arguments_and_folds_trivia():
    assert structural_key(parse("max(f, mul(1, y))")) == structural_key(parse("max(y, f)"))
    assert structural_key(parse("min(y, y)")) == "y"
    assert structural_key(parse("sub(y, f)")) != structural_key(parse("sub(f, y)"))
    assert structural_key(parse("abs(abs(sub(y, f)))")) == "abs(sub(y, f))"


def test_log_of_zero_is_the_protected_constant():
    # The protected log(0) is log(1e-7), a constant: no infinity, and an exact SymPy key.
    key = canonical_key("add(log(sub(y, y)), f)")
    assert key.method == "sympy" and key == canonical_key("add(f, log(mul(f, sub(y, y))))")
    assert key != canonical_key("f")


def test_large_expressions_are_bounded(monkeypatch):
    # Work is bounded by the deterministic budget (a count), checked before any SymPy work.
    expr = "add(y, f)"
    for _ in range(12):
        expr = f"aq({expr}, add(y, {expr}))"
    assert expansion_work(parse(expr)) > DEFAULT_BUDGET

    def no_sympy(tree):
        raise AssertionError("SymPy work started on an over-budget expression")

    monkeypatch.setattr(rules, "canonical_form", no_sympy)
    key = canonical_key(expr)
    assert key.method == "structural"


def test_random_population_keys_stay_within_the_budget():
    from evomal.gp.operators import init_population

    pop = init_population(25, seed=123, init_height=(2, 6), max_height=10)
    keys = [canonical_key(ind.expression) for ind in pop]
    work = [expansion_work(parse(ind.expression)) for ind in pop]
    assert all(k.key for k in keys)
    assert all(w <= DEFAULT_BUDGET for k, w in zip(keys, work) if k.method == "sympy")
    assert sum(k.method == "sympy" for k in keys) >= 20  # the budget leaves typical trees to SymPy


_SUBPROCESS = """
import json, sys
from evomal.gp.canonical import canonical_key
exprs = json.loads(sys.stdin.read())
# reverse order: a different SymPy cache history must not change any key
print(json.dumps([canonical_key(e).key for e in reversed(exprs)][::-1]))
"""


def test_keys_are_deterministic_across_processes():
    from evomal.gp.operators import init_population

    exprs = [e for pair in EQUAL + DIFFERENT for e in pair]
    exprs += [ind.expression for ind in init_population(40, seed=9, init_height=(2, 5), max_height=10)]
    here = [canonical_key(e).key for e in exprs]
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS], input=json.dumps(exprs), capture_output=True, text=True,
        env=env, check=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert json.loads(out.stdout) == here
