"""Code generation: an expression tree as straight-line PyTorch code (DESIGN §1.3).

Each edge child -> parent carries one scalar weight that multiplies the child's value before the
parent's operation; the root has none. Weights are numbered in preorder of the non-root nodes: the edge
above preorder node k (k >= 1) is weight k - 1.

Two generators, both exec'd once and cached:

* :func:`compile_expression` - weights are a tensor argument ``w``; pure, so it runs under autograd
  and ``torch.func`` transforms. Used by the local search, which differentiates through the weights.
* :func:`compile_frozen` - weights are literals, carried as a pending scale through the operations
  where the algebra allows (``mul``, ``square``, ``abs``, ``sign``, ``sqrt``, ``add``/``sub`` via
  ``alpha``, ``min``/``max`` of equal scales or with a constant, ``aq`` by a constant) and folded in
  constant subtrees, so a loss with fixed weights costs about what the same expression written by
  hand costs; results differ from the tensor-weight form by rounding only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import torch
from torch import Tensor

from evomal.gp.expressions import Node, parse
from evomal.gp.primitives import CONSTANTS, EPS, PRIMITIVES, VARIABLES

KINDS = ("classification", "regression")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")
    return kind


def literal(x: float) -> str:
    """A float as Python source; inf / nan have no literal."""
    if math.isfinite(x):
        return repr(float(x))
    return f"float({str(x)!r})"


def exec_function(source: str, name: str, label: str) -> Callable:
    namespace: dict = {"torch": torch}
    exec(compile(source, f"<evomal {label}>", "exec"), namespace)
    return namespace[name]


# --------------------------------------------------------------------------- weights as a tensor
@dataclass(frozen=True)
class CompiledExpression:
    """Element-wise ``fn(w, y, f)`` of an expression with edge weights ``w`` (shape (num_edges,))."""

    text: str
    num_edges: int
    source: str
    fn: Callable[[Tensor, Tensor, Tensor], Tensor]

    def __call__(self, w: Tensor, y: Tensor, f: Tensor) -> Tensor:
        return self.fn(w, y, f)


def expression_source(tree: Node, name: str = "elementwise") -> str:
    """Straight-line source of ``name(w, y, f)``: one line per node, children before parents."""
    lines = [f"def {name}(w, y, f):", f"    # {tree}"]
    if tree.num_edges:
        # one unbind instead of a select per edge: fewer dispatcher calls per evaluation
        names = ", ".join(f"w{i}" for i in range(tree.num_edges))
        lines.append(f"    {names}, = w.unbind()")
    counter = iter(range(tree.size))  # preorder numbers (a subtree object may occur twice)

    def emit(node: Node) -> str:
        k = next(counter)
        if node.op in VARIABLES:
            expr = node.op
        elif node.op in CONSTANTS:
            expr = literal(CONSTANTS[node.op])
        else:
            args = [emit(c) for c in node.children]
            expr = PRIMITIVES[node.op].code.format(*args)
            if k:  # the weight multiplies the node's whole value
                expr = f"({expr})"
        if k == 0:
            lines.append(f"    return {expr}")
            return ""
        # the node's line already carries its edge weight, so a parent uses the name as is
        lines.append(f"    v{k} = w{k - 1} * {expr}")
        return f"v{k}"

    if tree.is_terminal:  # a lone terminal: no edges
        op = tree.op
        lines.append(f"    return {op if op in VARIABLES else f'torch.full_like(f, {literal(CONSTANTS[op])})'}")
    else:
        emit(tree)
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=4096)
def _compile_text(text: str) -> CompiledExpression:
    tree = parse(text)
    source = expression_source(tree)
    return CompiledExpression(text, tree.num_edges, source, exec_function(source, "elementwise", text))


def compile_expression(tree: Node | str) -> CompiledExpression:
    """Compile (or fetch from the cache, keyed by the expression text) ``fn(w, y, f)``."""
    return _compile_text(str(tree) if isinstance(tree, Node) else str(parse(tree)))


# --------------------------------------------------------------------------- weights as literals
@dataclass(frozen=True)
class _Value:
    """A node's value during frozen code generation: ``scale * expr``, or the constant ``scale``."""

    scale: float
    expr: str | None = None

    @property
    def const(self) -> bool:
        return self.expr is None


def _sign(a: float) -> float:
    return a if math.isnan(a) else float((a > 0) - (a < 0))


def _nanmin(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _nanmax(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _const_op(op: str, args: list[float]) -> float:
    """Python float semantics of a primitive, for folding constant subtrees."""
    a = args[0]
    b = args[1] if len(args) > 1 else 0.0
    try:
        return {
            "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
            "aq": lambda: a / math.sqrt(1.0 + b * b), "sign": lambda: _sign(a), "square": lambda: a * a,
            "abs": lambda: abs(a), "log": lambda: math.log(max(abs(a), EPS)),
            "sqrt": lambda: math.sqrt(max(abs(a), EPS)), "tanh": lambda: math.tanh(a),
            "min": lambda: _nanmin(a, b), "max": lambda: _nanmax(a, b),
        }[op]()
    except OverflowError:
        return math.inf


class _FrozenWriter:
    """Generates the literal-weight code; ``value(node)`` returns the node's :class:`_Value`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0
        self.seen: dict[str, str] = {}  # the code is pure: an expression repeated is computed once

    def assign(self, expr: str) -> str:
        if expr in self.seen:
            return self.seen[expr]
        name = self.seen[expr] = f"t{self.count}"
        self.count += 1
        self.lines.append(f"    {name} = {expr}")
        return name

    def tensor(self, v: _Value) -> str:
        """Source of a tensor (or float) equal to ``v`` with the scale applied."""
        if v.const:
            return literal(v.scale)
        if v.scale == 1.0:
            return v.expr
        return self.assign(f"{v.expr} * {literal(v.scale)}")

    def apply(self, op: str, a: _Value, b: _Value | None) -> _Value:
        if a.const and (b is None or b.const):
            return _Value(_const_op(op, [a.scale] + ([] if b is None else [b.scale])))
        folded = self.fold(op, a, b)
        if folded is not None:
            return folded
        return self.plain(op, a, b)

    def fold(self, op: str, a: _Value, b: _Value | None) -> _Value | None:
        """Exact algebraic moves of the scales through ``op``; None where none applies."""
        sa = a.scale
        usable = lambda s: math.isfinite(s) and s != 0.0  # noqa: E731 - dividing by it must be safe
        if op in ("add", "sub"):
            sb = b.scale if op == "add" else -b.scale
            if a.const:
                a, b, sa, sb = b, a, sb, sa
            if not usable(sa):
                return None
            if b.const:  # s*e + c = s*(e + c/s)
                return _Value(sa, self.assign(f"{a.expr} + {literal(sb / sa)}"))
            r = sb / sa
            if r == 1.0:
                return _Value(sa, self.assign(f"{a.expr} + {b.expr}"))
            if r == -1.0:
                return _Value(sa, self.assign(f"{a.expr} - {b.expr}"))
            return _Value(sa, self.assign(f"torch.add({a.expr}, {b.expr}, alpha={literal(r)})"))
        if op == "mul":
            if a.const:
                return _Value(a.scale * b.scale, b.expr)
            if b.const:
                return _Value(a.scale * b.scale, a.expr)
            return _Value(a.scale * b.scale, self.assign(f"{a.expr} * {b.expr}"))
        if op == "square":  # torch.square: same values as e * e, one backward kernel instead of three
            return _Value(sa * sa, self.assign(f"torch.square({a.expr})"))
        if op == "abs":
            return _Value(abs(sa), self.assign(f"torch.abs({a.expr})"))
        if op == "sign" and usable(sa):
            return _Value(_sign(sa), self.assign(f"torch.sign({a.expr})"))
        if op == "sqrt" and usable(sa):  # sqrt(max(|s e|, eps)) = sqrt|s| * sqrt(max(|e|, eps/|s|))
            return _Value(math.sqrt(abs(sa)),
                          self.assign(f"torch.sqrt(torch.clamp(torch.abs({a.expr}), min={literal(EPS / abs(sa))}))"))
        if op == "aq":
            if b.const:  # a / sqrt(1 + c^2) is a rescaling of a
                return _Value(sa / math.sqrt(1.0 + b.scale * b.scale), a.expr)
            bt = self.tensor(b)
            factor = f"torch.rsqrt(1.0 + {bt} * {bt})"
            if a.const:
                return _Value(sa, self.assign(factor))
            return _Value(sa, self.assign(f"{a.expr} * {factor}"))
        if op in ("min", "max"):
            if a.const:
                a, b = b, a
            sa = a.scale
            if not usable(sa):
                return None
            # for s < 0, min(s e, s d) = s max(e, d): the order flips with the sign of the scale
            keep = op if sa > 0 else ("max" if op == "min" else "min")
            if b.const:
                bound = "max" if keep == "min" else "min"
                return _Value(sa, self.assign(f"torch.clamp({a.expr}, {bound}={literal(b.scale / sa)})"))
            if b.scale == sa:
                fn = "torch.minimum" if keep == "min" else "torch.maximum"
                return _Value(sa, self.assign(f"{fn}({a.expr}, {b.expr})"))
        return None

    def plain(self, op: str, a: _Value, b: _Value | None) -> _Value:
        """The primitive's own template on scaled operands."""
        if op in ("min", "max") and (a.const or b.const):
            t, c = (b, a) if a.const else (a, b)
            bound = "max" if op == "min" else "min"
            return _Value(1.0, self.assign(f"torch.clamp({self.tensor(t)}, {bound}={literal(c.scale)})"))
        args = [self.tensor(a)] + ([] if b is None else [self.tensor(b)])
        return _Value(1.0, self.assign(PRIMITIVES[op].code.format(*args)))

    def value(self, node: Node, weights: Sequence[float], counter) -> _Value:
        """``counter`` yields preorder numbers: the edge above node k has weight k - 1."""
        k = next(counter)
        if node.op in VARIABLES:
            v = _Value(1.0, node.op)
        elif node.op in CONSTANTS:
            v = _Value(CONSTANTS[node.op])
        else:
            args = [self.value(c, weights, counter) for c in node.children]
            v = self.apply(node.op, args[0], args[1] if len(args) > 1 else None)
        if k == 0:
            return v
        return _Value(v.scale * weights[k - 1], v.expr)


@dataclass(frozen=True)
class FrozenExpression:
    """Element-wise ``scale * fn(y, f)`` of an expression with fixed weights.

    The overall scale is kept apart so that a batch loss folds it into the reduction.
    """

    text: str
    weights: tuple[float, ...]
    source: str
    fn: Callable[[Tensor, Tensor], Tensor]
    scale: float

    def __call__(self, y: Tensor, f: Tensor) -> Tensor:
        return self.fn(y, f) * self.scale


def _plain_frozen_source(tree: Node, weights: Sequence[float]) -> str:
    """No folding: used when a weight is not finite, where the algebra of the folds breaks down."""
    listed = ", ".join(literal(w) for w in weights)
    return (expression_source(tree, "_weighted") + "\n\ndef frozen(y, f):\n"
            f"    w = torch.tensor([{listed}], dtype=f.dtype, device=f.device)\n"
            "    return _weighted(w, y, f)\n")


@lru_cache(maxsize=4096)
def compile_frozen_text(text: str, weights: tuple[float, ...]) -> FrozenExpression:
    tree = parse(text)
    if len(weights) != tree.num_edges:
        raise ValueError(f"{text}: expected {tree.num_edges} weights, got {len(weights)}")
    if not all(math.isfinite(w) for w in weights):
        source, scale = _plain_frozen_source(tree, weights), 1.0
    else:
        writer = _FrozenWriter()
        root = writer.value(tree, weights, iter(range(tree.size)))
        if root.const:  # no variable left: a constant loss, still shaped like the batch
            result, scale = "torch.ones_like(f)", root.scale
        else:
            result, scale = root.expr, root.scale
        header = ["def frozen(y, f):", f"    # {text}", f"    # weights {list(weights)}"]
        source = "\n".join(header + writer.lines + [f"    return {result}"]) + "\n"
    return FrozenExpression(text, weights, source, exec_function(source, "frozen", text), scale)


def compile_frozen(tree: Node | str, weights: Sequence[float] | Tensor) -> FrozenExpression:
    """Compile (or fetch, keyed by text and weights) the literal-weight element-wise function."""
    text = str(tree) if isinstance(tree, Node) else str(parse(tree))
    if isinstance(weights, Tensor):
        weights = weights.detach().double().cpu().tolist()
    return compile_frozen_text(text, tuple(float(w) for w in weights))
