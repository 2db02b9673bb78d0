"""Compiled loss networks: values against SymPy and a tree interpreter, loss files, devices."""
from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evomal.losses.codegen import compile_expression, compile_frozen
from evomal.losses.lossfile import load_loss, save_loss
from evomal.losses.modules import CompiledLoss, FrozenLoss, baseline_loss, initial_weights, loss_value, prepare
from evomal.gp.expressions import Node, parse, repair, to_sympy
from evomal.gp.primitives import CONSTANTS, PRIMITIVES, TERMINALS

CE = "mul(-1, mul(y, log(f)))"



def random_tree(rng: random.Random, height: int, grow: bool = True) -> Node:
    """Ramped-half-and-half style random tree of at most ``height``, repaired to hold y and f."""

    def build(depth: int) -> Node:
        if depth == height or (grow and depth > 0 and rng.random() < 0.3):
            return Node(rng.choice(TERMINALS))
        prim = PRIMITIVES[rng.choice(sorted(PRIMITIVES))]
        return Node(prim.name, tuple(build(depth + 1) for _ in range(prim.arity)))

    while True:  # repairing can add a level; draw again rather than exceed the height
        tree, _ = repair(build(0), rng)
        tree, _ = repair(tree, rng)
        if tree.height <= height:
            return tree


def random_trees(count: int, seed: int = 0) -> list[Node]:
    rng = random.Random(seed)
    return [random_tree(rng, rng.randint(1, 6), grow=rng.random() < 0.5) for _ in range(count)]


def interpret(tree: Node, w: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Reference semantics: walk the tree with each primitive's torch_fn and the edge weights."""
    counter = iter(range(-1, tree.num_edges))

    def walk(node: Node) -> torch.Tensor:
        k = next(counter)
        if node.op == "y":
            value = y
        elif node.op == "f":
            value = f
        elif node.op in CONSTANTS:
            value = torch.full_like(f, CONSTANTS[node.op])
        else:
            value = PRIMITIVES[node.op].torch_fn(*(walk(c) for c in node.children))
        return value if k < 0 else w[k] * value

    return walk(tree)


def sample_inputs(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 y, f: normal values, values near 0 (both signs), negatives, one-hot and softmax-like."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, generator=g, dtype=torch.float64) * 2
    f = torch.randn(n, generator=g, dtype=torch.float64) * 2
    near0 = torch.tensor([0.0, 1e-9, -1e-9, 1e-6, -3e-8, 2e-7], dtype=torch.float64)
    y[:6], f[6:12] = near0, near0
    y[12:112] = (torch.rand(100, generator=g) < 0.1).double()  # one-hot entries
    f[12:112] = torch.rand(100, generator=g, dtype=torch.float64)  # probabilities
    return y, f


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """Elementwise: equal within tolerance, or the same non-finite value."""
    same_nonfinite = (a == b) | (torch.isnan(a) & torch.isnan(b))
    return same_nonfinite | ((a - b).abs() <= atol + rtol * b.abs())


TREES = random_trees(240)


def test_random_trees_cover_the_search_space():
    ops = {n.op for t in TREES for n in t.preorder()}
    assert ops == set(PRIMITIVES) | set(TERMINALS)
    assert max(t.height for t in TREES) == 6
    assert all(t.variables() == {"y", "f"} for t in TREES)


def test_compiled_with_unit_weights_equals_sympy():
    import sympy as sp

    y, f = sample_inputs()
    ys, fs = sp.Symbol("y", real=True), sp.Symbol("f", real=True)
    bad = []
    with np.errstate(all="ignore"):
        for tree in TREES:
            expected = sp.lambdify([ys, fs], to_sympy(tree, exact=True), modules="numpy")(y.numpy(), f.numpy())
            expected = torch.as_tensor(np.broadcast_to(np.asarray(expected, dtype=np.float64), y.shape).copy())
            got = compile_expression(tree)(torch.ones(tree.num_edges, dtype=torch.float64), y, f)
            ok = _close(got.expand_as(y), expected, rtol=1e-7, atol=1e-10)
            if not bool(ok.all()):
                i = int((~ok).nonzero()[0])
                bad.append(f"{tree}: y={y[i].item()!r} f={f[i].item()!r} got {got.expand_as(y)[i].item()!r} "
                           f"sympy {expected[i].item()!r}")
    assert not bad, "\n".join(bad[:10])


def test_compiled_and_frozen_equal_the_interpreter_with_random_weights():
    y, f = sample_inputs(seed=1)
    for i, tree in enumerate(TREES):
        w = initial_weights(tree, seed=i, noise=0.3, dtype=torch.float64)
        expected = interpret(tree, w, y, f).expand_as(y)
        got = compile_expression(tree)(w, y, f).expand_as(y)
        assert bool(_close(got, expected, rtol=1e-12, atol=1e-14).all()), str(tree)
        frozen = compile_frozen(tree, w)
        got = frozen(y, f).expand_as(y)
        # folding the scales changes rounding only
        ok = _close(got, expected, rtol=1e-8, atol=1e-9)
        assert bool(ok.all()), f"{tree}\n{frozen.source}"


def test_generated_source_is_straight_line_and_cached():
    tree = parse(CE)
    compiled = compile_expression(tree)
    assert compiled is compile_expression(CE)
    body = compiled.source.splitlines()
    assert body[0] == "def elementwise(w, y, f):"
    assert sum(line.strip().startswith("v") for line in body) == tree.num_edges  # one line per non-root node
    assert "w4 * f" in compiled.source and "w0 * -1.0" in compiled.source
    assert not any(k in compiled.source for k in ("for ", "while ", "if "))


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_batch_loss_definition(kind):
    g = torch.Generator().manual_seed(3)
    out = torch.randn(16, 5 if kind == "classification" else 1, generator=g, dtype=torch.float64)
    target = (torch.randint(0, 5, (16,), generator=g) if kind == "classification"
              else torch.randn(16, 1, generator=g, dtype=torch.float64))
    for i, tree in enumerate(TREES[:60]):
        w = initial_weights(tree, seed=i, noise=0.1, dtype=torch.float64)
        loss = CompiledLoss(tree, kind, w).double()
        if kind == "classification":
            f = torch.softmax(out, 1)
            y = F.one_hot(target, 5).double()
            expected = interpret(tree, w, y, f).expand_as(f).sum(1).mean()
        else:
            expected = interpret(tree, w, target, out).expand_as(out).mean()
        got = loss(out, target)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
        frozen = FrozenLoss(tree, kind, w)(out, target)
        torch.testing.assert_close(frozen, expected, rtol=1e-7, atol=1e-9, equal_nan=True)


def test_cross_entropy_expression_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    expected = F.cross_entropy(out, target)
    torch.testing.assert_close(CompiledLoss(CE, "classification")(out, target), expected)
    torch.testing.assert_close(FrozenLoss(CE, "classification")(out, target), expected)
    mse = CompiledLoss("square(sub(y, f))", "regression")
    y = torch.randn(64, 1, generator=g)
    torch.testing.assert_close(mse(out[:, :1], y), baseline_loss("regression")(out[:, :1], y))
    # a (N,) regression target is aligned with (N, 1) outputs, never broadcast to (N, N)
    torch.testing.assert_close(mse(out[:, :1], y[:, 0]), baseline_loss("regression")(out[:, :1], y[:, 0]))


def test_functional_form_works_under_torch_func_grad():
    tree = parse("aq(mul(y, log(f)), sub(f, -1))")
    fn = compile_expression(tree)
    w = initial_weights(tree, seed=0, noise=0.1)
    out, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    g_func = torch.func.grad(lambda w_: loss_value(fn, "classification", w_, out, target))(w)
    w_leaf = w.clone().requires_grad_(True)
    CompiledLoss.functional(fn, "classification", w_leaf, out, target).backward()
    torch.testing.assert_close(g_func, w_leaf.grad)
    # and per-sample gradients w.r.t. the outputs with vmap (scatter_ has no batching rule: a warning)
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    per_sample = torch.func.vmap(torch.func.grad(
        lambda o, t: loss_value(fn, "classification", w, o[None], t[None])))(out, target)
    assert per_sample.shape == out.shape and bool(torch.isfinite(per_sample).all())


def test_compiled_loss_weights_are_a_trainable_parameter():
    loss = CompiledLoss(CE, "classification", initial_weights(parse(CE), seed=1))
    assert [n for n, _ in loss.named_parameters()] == ["weights"]
    out, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss(out, target).backward()
    assert loss.weights.grad is not None and loss.weights.grad.shape == (5,)
    with pytest.raises(ValueError, match="5 edges"):
        CompiledLoss(CE, "classification", torch.ones(3))
    with pytest.raises(ValueError, match="kind"):
        CompiledLoss(CE, "ranking")


def test_initial_weights():
    tree = parse(CE)
    a, b = initial_weights(tree, seed=7), initial_weights(tree, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, initial_weights(tree, seed=8))
    assert float((a - 1).abs().max()) < 1e-2 and not bool((a == 1).all())
    assert torch.equal(initial_weights(tree, noise=0.0), torch.ones(5))  # GP-LFL
    with pytest.raises(ValueError, match="seed"):
        initial_weights(tree)


def test_a_subtree_object_used_twice_gets_its_own_weights():
    shared = parse("sub(y, f)")
    tree = Node("mul", (shared, shared))  # GP operators may share subtree objects
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    y, f = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    expected = (1 * (2 * y - 3 * f)) * (4 * (5 * y - 6 * f))
    torch.testing.assert_close(compile_expression(tree)(w, y, f), expected)
    torch.testing.assert_close(compile_frozen(tree, w)(y, f), expected)


def test_constants_and_nonfinite_weights_in_frozen_code():
    tree = parse("add(mul(-1, 1), sub(y, f))")
    frozen = compile_frozen(tree, [2.0, 0.5, 3.0, 1.0, 1.0, 1.0])
    y, f = torch.tensor([1.0, 0.0]), torch.tensor([0.25, 0.5])
    torch.testing.assert_close(frozen(y, f), 2.0 * (0.5 * -1.0 * 3.0) + (y - f))
    nan = compile_frozen(tree, [math.nan, 1, 1, 1, 1, 1])
    assert bool(torch.isnan(nan(y, f)).all())


def test_save_and_load_round_trip(tmp_path):
    tree = parse("min(aq(sub(y, f), -1), sqrt(max(f, 1)))")
    w = initial_weights(tree, seed=3, noise=0.05)
    path = tmp_path / "best" / "loss.json"
    doc = save_loss(path, tree, "regression", w, id="c7", fitness=math.inf)
    assert [p.name for p in path.parent.iterdir()] == ["loss.json"]  # no temp file left behind
    stored = json.loads(path.read_text())
    assert stored == doc
    assert stored["expression"] == str(tree) and stored["kind"] == "regression"
    assert stored["tree"][0] == "min" and stored["fitness"] == "inf" and stored["id"] == "c7"
    assert "Min(" in stored["formula"] and "\\min" in stored["latex"]
    loaded = load_loss(path)
    assert loaded.tree == tree and loaded.kind == "regression" and loaded.info["id"] == "c7"
    assert torch.equal(loaded.weights.detach(), w) and not loaded.weights.requires_grad
    out, target = torch.randn(32, 1), torch.randn(32, 1)
    original = CompiledLoss(tree, "regression", w)
    assert torch.equal(loaded(out, target), original(out, target))
    assert torch.equal(loaded.frozen()(out, target), original.frozen()(out, target))
    assert load_loss(path, trainable=True).weights.requires_grad


def test_load_loss_reports_damaged_files(tmp_path):
    path = tmp_path / "loss.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="loss.json"):
        load_loss(path)
    path.write_text(json.dumps({"format": "evomal-loss", "version": 1, "expression": "add(y, f)",
                                "tree": ["sub", "y", "f"], "kind": "regression", "weights": [1, 1]}))
    with pytest.raises(ValueError, match="disagree"):
        load_loss(path)
    with pytest.raises(ValueError, match="non-finite"):
        save_loss(tmp_path / "x.json", parse("add(y, f)"), "regression", [1.0, math.nan])


def test_prepare_shapes():
    y, f = prepare("classification", torch.zeros(3, 4), torch.tensor([0, 3, 1]))
    assert torch.equal(y, F.one_hot(torch.tensor([0, 3, 1]), 4).float()) and torch.allclose(f, torch.full((3, 4), 0.25))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_loss_on_cuda():
    tree = parse("aq(mul(y, log(f)), sub(f, -1))")
    w = initial_weights(tree, seed=0, noise=0.1)
    out, target = torch.randn(32, 10), torch.randint(0, 10, (32,))
    cpu = CompiledLoss(tree, "classification", w)
    gpu = CompiledLoss(tree, "classification", w).to("cuda")
    value = gpu(out.cuda(), target.cuda())
    value.backward()
    assert value.device.type == "cuda" and gpu.weights.grad.device.type == "cuda"
    torch.testing.assert_close(value.cpu(), cpu(out, target), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu.frozen()(out.cuda(), target.cuda()).cpu(), cpu(out, target), rtol=1e-5, atol=1e-6)
