"""Expression trees: text and JSON forms, parse errors, repair, and the protected primitives."""
import json
import math
import random

import pytest
import torch

from evomal.gp.expressions import ExpressionError, Node, from_json, parse, repair, replace_at, to_json, to_sympy
from evomal.gp.primitives import EPS, PRIMITIVES, TERMINALS


def random_tree(rng: random.Random, height: int) -> Node:
    """A grow-style random tree of at most ``height`` (independent of the GP code under test)."""
    if height == 0 or rng.random() < 0.3:
        return Node(rng.choice(TERMINALS))
    prim = PRIMITIVES[rng.choice(sorted(PRIMITIVES))]
    return Node(prim.name, tuple(random_tree(rng, height - 1) for _ in range(prim.arity)))


def random_trees(n: int, seed: int = 0, max_height: int = 6) -> list[Node]:
    rng = random.Random(seed)
    return [random_tree(rng, rng.randint(0, max_height)) for _ in range(n)]


# --------------------------------------------------------------------------- text and JSON forms


def test_parse_print_round_trip_on_random_trees():
    for tree in random_trees(300):
        text = str(tree)
        assert parse(text) == tree
        assert str(parse(text)) == text


def test_parse_accepts_whitespace_and_constant_spellings():
    assert parse("  add( y ,f )  ") == Node("add", (Node("y"), Node("f")))
    assert parse("mul(+1, -1.0)") == Node("mul", (Node("1"), Node("-1")))
    assert str(parse("sub(y,f)")) == "sub(y, f)"


def test_json_round_trip():
    for tree in random_trees(100, seed=1):
        obj = json.loads(json.dumps(to_json(tree)))
        assert from_json(obj) == tree
    assert to_json(parse("add(mul(y, log(f)), -1)")) == ["add", ["mul", "y", ["log", "f"]], "-1"]


@pytest.mark.parametrize("bad", [{"op": "add"}, [], [1, "y"], 3])
def test_from_json_rejects_non_expressions(bad):
    with pytest.raises(ExpressionError):
        from_json(bad)


@pytest.mark.parametrize(
    "text, position, words",
    [
        ("add(y, f", 8, "expected ')'"),  # unbalanced: missing close
        ("add(y, f))", 9, "unexpected text"),  # unbalanced: extra close
        ("add(y, foo)", 7, "unknown symbol 'foo'"),
        ("add(y)", 5, "2 arguments"),  # wrong arity: too few
        ("log(y, f)", 5, "1 argument"),  # wrong arity: too many
        ("add(y, f) y", 10, "unexpected text"),  # trailing text
        ("add(y, 2)", 7, "only the constants 1 and -1"),
        ("mul(0.5, f)", 4, "only the constants 1 and -1"),
        ("", 0, "expected a symbol"),
        ("add(y, $)", 7, "unexpected character '$'"),
        ("log y", 4, "expected '('"),
    ],
)
def test_parse_errors_name_expression_and_position(text, position, words):
    with pytest.raises(ExpressionError) as info:
        parse(text)
    message = str(info.value)
    assert repr(text) in message
    assert f"position {position}" in message
    assert words in message


def test_node_validates_arity_and_symbols():
    with pytest.raises(ExpressionError):
        Node("add", (Node("y"),))
    with pytest.raises(ExpressionError):
        Node("exp", (Node("y"),))
    with pytest.raises(ExpressionError):
        Node("y", (Node("f"),))


def test_measures_follow_deap_conventions():
    assert parse("y").height == 0
    tree = parse("add(mul(y, log(f)), -1)")
    assert (tree.size, tree.height, tree.num_edges) == (6, 3, 5)
    assert [n.op for n in tree.preorder()] == ["add", "mul", "y", "log", "f", "-1"]
    assert tree.variables() == {"y", "f"}


def test_replace_at_replaces_the_preorder_node():
    tree = parse("add(mul(y, log(f)), -1)")
    assert str(replace_at(tree, 3, Node("y"))) == "add(mul(y, y), -1)"
    assert str(replace_at(tree, 5, parse("sqrt(f)"))) == "add(mul(y, log(f)), sqrt(f))"
    assert replace_at(tree, 0, Node("f")) == Node("f")


# --------------------------------------------------------------------------- repair


@pytest.mark.parametrize("text", ["add(1, -1)", "log(y)", "square(f)", "-1", "y", "tanh(mul(f, 1))"])
def test_repair_adds_missing_variables(text):
    for seed in range(10):
        tree, changed = repair(parse(text), random.Random(seed))
        assert changed
        assert tree.variables() == {"y", "f"}
        assert tree.height <= parse(text).height + 1


def test_repair_leaves_complete_trees_alone():
    for tree in random_trees(200, seed=2):
        if tree.variables() == {"y", "f"}:
            rng = random.Random(0)
            state = rng.getstate()
            assert repair(tree, rng) == (tree, False)
            assert rng.getstate() == state  # no draw: repair must not shift later random streams


def test_repair_is_deterministic_for_a_seeded_rng():
    tree = parse("add(sqrt(1), log(-1))")
    results = {str(repair(tree, random.Random(7))[0]) for _ in range(5)}
    assert len(results) == 1


# --------------------------------------------------------------------------- primitives


EXTREME = [0.0, -0.0, 1e-20, -1e-20, -1.0, -3.5, 2.0, 1e15, -1e15]


def _inputs(arity: int) -> list[tuple[float, ...]]:
    if arity == 1:
        return [(v,) for v in EXTREME]
    return [(a, b) for a in EXTREME for b in EXTREME]


def _torch_code(prim, args):
    names = [f"a{i}" for i in range(len(args))]
    return eval(prim.code.format(*names), {"torch": torch}, dict(zip(names, args)))


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_protected_primitive_values_and_gradients_are_finite(name, dtype):
    prim = PRIMITIVES[name]
    columns = list(zip(*_inputs(prim.arity)))
    args = [torch.tensor(c, dtype=dtype, requires_grad=True) for c in columns]
    out = prim.torch_fn(*args)
    assert torch.isfinite(out).all(), f"{name}: non-finite value"
    grads = torch.autograd.grad(out.sum(), args, allow_unused=True)
    for g in grads:
        assert g is None or torch.isfinite(g).all(), f"{name}: non-finite gradient"
    # The code template (used to compile losses) computes the same function.
    detached = [a.detach() for a in args]
    assert torch.equal(_torch_code(prim, detached), prim.torch_fn(*detached))


def test_protected_log_and_sqrt_clamp_at_eps():
    zero = torch.zeros(1, dtype=torch.float64)
    assert PRIMITIVES["log"].torch_fn(zero).item() == pytest.approx(math.log(EPS))
    assert PRIMITIVES["sqrt"].torch_fn(zero).item() == pytest.approx(math.sqrt(EPS))
    assert PRIMITIVES["sqrt"].torch_fn(torch.tensor([-4.0])).item() == pytest.approx(2.0)


def _torch_eval(tree: Node, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if tree.op == "y":
        return y
    if tree.op == "f":
        return f
    if tree.is_terminal:
        return torch.full_like(y, float(tree.op))
    return PRIMITIVES[tree.op].torch_fn(*(_torch_eval(c, y, f) for c in tree.children))


def test_exact_sympy_form_matches_torch():
    import sympy as sp

    ys = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 3.0], dtype=torch.float64)
    fs = torch.tensor([0.7, 0.0, -1.5, 0.3, 2.0, -0.1], dtype=torch.float64)
    for tree in random_trees(40, seed=3, max_height=4):
        expr = to_sympy(tree, exact=True)
        symbols = sorted(expr.free_symbols, key=str)
        fn = sp.lambdify([sp.Symbol("y", real=True), sp.Symbol("f", real=True)], expr, "math")
        expected = _torch_eval(tree, ys, fs)
        for i in range(len(ys)):
            got = float(fn(float(ys[i]), float(fs[i])))
            assert got == pytest.approx(float(expected[i]), rel=1e-9, abs=1e-9), (str(tree), symbols)
