"""Expression trees compiled into trainable loss networks (DESIGN §1.3), and their loss files.

Each edge child -> parent carries one scalar weight that multiplies the child's value before the
parent's operation; the root has none. Weights are numbered in preorder of the non-root nodes: the edge
above preorder node k (k >= 1) is weight k - 1.

Two code generators, both straight-line Python exec'd once and cached:

* :func:`compile_expression` - weights are a tensor argument ``w``; pure, so it runs under autograd
  and ``torch.func`` transforms. Used by the local search, which differentiates through the weights.
* :func:`compile_frozen` - weights are literals, carried as a pending scale through the operations
  where the algebra allows (``mul``, ``square``, ``abs``, ``sign``, ``sqrt``, ``add``/``sub`` via
  ``alpha``, ``min``/``max`` of equal scales or with a constant, ``aq`` by a constant) and folded in
  constant subtrees, so a loss with fixed weights costs about what the same expression written by
  hand costs; results differ from the tensor-weight form by rounding only. Used to train networks
  (fitness, meta-test, users' own loops via :meth:`CompiledLoss.frozen` / :class:`FrozenLoss`).

A loss of a batch (DESIGN §1.1): classification applies the expression to f = softmax(logits) and
y = one-hot(target), sums over classes and averages over the batch; regression applies it to the raw
outputs and targets and averages.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evomal.gp.expressions import Node, from_json, parse, to_json
from evomal.core.files import atomic_write_bytes
from evomal.gp.primitives import CONSTANTS, EPS, PRIMITIVES, VARIABLES

KINDS = ("classification", "regression")
FILE_FORMAT = "evomal-loss"
FILE_VERSION = 1


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")
    return kind


def _literal(x: float) -> str:
    """A float as Python source; inf / nan have no literal."""
    if math.isfinite(x):
        return repr(float(x))
    return f"float({str(x)!r})"


def _exec_function(source: str, name: str, label: str) -> Callable:
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
            expr = _literal(CONSTANTS[node.op])
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
        lines.append(f"    return {op if op in VARIABLES else f'torch.full_like(f, {_literal(CONSTANTS[op])})'}")
    else:
        emit(tree)
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=4096)
def _compile_text(text: str) -> CompiledExpression:
    tree = parse(text)
    source = expression_source(tree)
    return CompiledExpression(text, tree.num_edges, source, _exec_function(source, "elementwise", text))


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
            return _literal(v.scale)
        if v.scale == 1.0:
            return v.expr
        return self.assign(f"{v.expr} * {_literal(v.scale)}")

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
                return _Value(sa, self.assign(f"{a.expr} + {_literal(sb / sa)}"))
            r = sb / sa
            if r == 1.0:
                return _Value(sa, self.assign(f"{a.expr} + {b.expr}"))
            if r == -1.0:
                return _Value(sa, self.assign(f"{a.expr} - {b.expr}"))
            return _Value(sa, self.assign(f"torch.add({a.expr}, {b.expr}, alpha={_literal(r)})"))
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
                          self.assign(f"torch.sqrt(torch.clamp(torch.abs({a.expr}), min={_literal(EPS / abs(sa))}))"))
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
                return _Value(sa, self.assign(f"torch.clamp({a.expr}, {bound}={_literal(b.scale / sa)})"))
            if b.scale == sa:
                fn = "torch.minimum" if keep == "min" else "torch.maximum"
                return _Value(sa, self.assign(f"{fn}({a.expr}, {b.expr})"))
        return None

    def plain(self, op: str, a: _Value, b: _Value | None) -> _Value:
        """The primitive's own template on scaled operands."""
        if op in ("min", "max") and (a.const or b.const):
            t, c = (b, a) if a.const else (a, b)
            bound = "max" if op == "min" else "min"
            return _Value(1.0, self.assign(f"torch.clamp({self.tensor(t)}, {bound}={_literal(c.scale)})"))
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
    listed = ", ".join(_literal(w) for w in weights)
    return (expression_source(tree, "_weighted") + "\n\ndef frozen(y, f):\n"
            f"    w = torch.tensor([{listed}], dtype=f.dtype, device=f.device)\n"
            "    return _weighted(w, y, f)\n")


@lru_cache(maxsize=4096)
def _compile_frozen_cached(text: str, weights: tuple[float, ...]) -> FrozenExpression:
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
    return FrozenExpression(text, weights, source, _exec_function(source, "frozen", text), scale)


def compile_frozen(tree: Node | str, weights: Sequence[float] | Tensor) -> FrozenExpression:
    """Compile (or fetch, keyed by text and weights) the literal-weight element-wise function."""
    text = str(tree) if isinstance(tree, Node) else str(parse(tree))
    if isinstance(weights, Tensor):
        weights = weights.detach().double().cpu().tolist()
    return _compile_frozen_cached(text, tuple(float(w) for w in weights))


# --------------------------------------------------------------------------- batch losses
def prepare(kind: str, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(y, f) of DESIGN §1.1: one-hot / softmax for classification, raw (same shape) for regression."""
    if kind == "classification":
        f = torch.softmax(output, dim=1)
        # scatter instead of F.one_hot: no range check, so no device sync on CUDA
        y = torch.zeros_like(f).scatter_(1, target.reshape(-1, 1), 1.0)
        return y, f
    if kind == "regression":
        return target.reshape(output.shape).to(output.dtype), output
    raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")


def _reduce(kind: str, values: Tensor, f: Tensor) -> Tensor:
    """Sum over classes and mean over the batch (classification); mean of all elements (regression)."""
    if values.shape != f.shape:  # an expression that lost a variable broadcasts to the batch
        values = values.expand(f.shape)
    if kind == "classification":
        return values.sum() / f.shape[0]
    return values.mean()


def loss_value(fn: CompiledExpression | Callable, kind: str, weights: Tensor, output: Tensor,
               target: Tensor) -> Tensor:
    """Batch loss of a compiled expression with explicit weights (differentiable in all three)."""
    y, f = prepare(kind, output, target)
    w = weights if weights.dtype == f.dtype else weights.to(f.dtype)
    return _reduce(kind, fn(w, y, f), f)


def _batch_loss_source(kind: str, scale: float) -> str:
    """``loss(output, target)`` around the element-wise ``frozen(y, f)``: DESIGN §1.1, as code.

    The frozen element-wise result always has the batch's shape (constants become ``ones_like(f)``),
    so no broadcast check is needed here.
    """
    if kind == "classification":
        return ("def loss(output, target):\n"
                "    f = torch.softmax(output, dim=1)\n"
                "    y = torch.zeros_like(f).scatter_(1, target.reshape(-1, 1), 1.0)\n"
                f"    return frozen(y, f).sum() * ({_literal(scale)} / f.shape[0])\n")
    tail = ".mean()" if scale == 1.0 else f".sum() * ({_literal(scale)} / f.numel())"
    return ("def loss(output, target):\n"
            "    f = output\n"
            "    y = target.reshape(f.shape).to(f.dtype)\n"
            f"    return frozen(y, f){tail}\n")


@dataclass(frozen=True)
class FrozenBatchLoss:
    """``fn(output, target)``: the whole batch loss with fixed weights, one exec'd module ``source``."""

    text: str
    kind: str
    weights: tuple[float, ...]
    source: str
    fn: Callable[[Tensor, Tensor], Tensor]


@lru_cache(maxsize=4096)
def _compile_batch_cached(text: str, kind: str, weights: tuple[float, ...]) -> FrozenBatchLoss:
    frozen = _compile_frozen_cached(text, weights)
    source = frozen.source + "\n\n" + _batch_loss_source(kind, frozen.scale)
    return FrozenBatchLoss(text, kind, weights, source, _exec_function(source, "loss", f"{kind} {text}"))


def compile_frozen_loss(tree: Node | str, kind: str, weights: Sequence[float] | Tensor) -> FrozenBatchLoss:
    """Compile (or fetch) the batch loss of ``tree`` with fixed ``weights`` for a task ``kind``."""
    text = str(tree) if isinstance(tree, Node) else str(parse(tree))
    if isinstance(weights, Tensor):
        weights = weights.detach().double().cpu().tolist()
    return _compile_batch_cached(text, _check_kind(kind), tuple(float(w) for w in weights))


def initial_weights(tree: Node, *, seed: int | None = None, noise: float = 1e-3,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
    """``1 + noise * N(0, 1)`` per edge (DESIGN §1.3); ``noise=0`` gives exactly ones (GP-LFL).

    Drawn on the CPU from a generator seeded with ``seed``, so the values do not depend on the device.
    """
    n = tree.num_edges
    if noise == 0.0:
        return torch.ones(n, dtype=dtype, device=device)
    if seed is None:
        raise ValueError("initial_weights needs a seed when noise is not 0")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) & ((1 << 63) - 1))
    draw = torch.randn(n, generator=gen, dtype=torch.float64)
    return (1.0 + noise * draw).to(dtype=dtype, device=device)


class CompiledLoss(nn.Module):
    """A loss network: the compiled expression with its edge weights as a parameter.

    ``forward(output, target)`` with logits and class indices (classification) or outputs and targets
    (regression). Differentiable in the weights; for training a network with fixed weights,
    :meth:`frozen` gives the same loss at a lower cost.
    """

    def __init__(self, tree: Node | str, kind: str, weights: Tensor | Sequence[float] | None = None,
                 *, trainable: bool = True) -> None:
        super().__init__()
        self.tree = parse(tree) if isinstance(tree, str) else tree
        self.kind = _check_kind(kind)
        self.compiled = compile_expression(self.tree)
        if weights is None:
            weights = torch.ones(self.tree.num_edges)
        elif not isinstance(weights, Tensor):
            weights = torch.tensor(weights, dtype=torch.float32)
        weights = torch.as_tensor(weights).detach().clone().reshape(-1)
        if not weights.is_floating_point():
            weights = weights.float()
        if weights.numel() != self.tree.num_edges:
            raise ValueError(f"{self.tree}: has {self.tree.num_edges} edges but {weights.numel()} weights were given")
        self.weights = nn.Parameter(weights, requires_grad=trainable)
        #: extra fields of the loss file this loss was loaded from
        self.info: dict = {}

    @property
    def expression(self) -> str:
        return str(self.tree)

    @property
    def source(self) -> str:
        return self.compiled.source

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return loss_value(self.compiled, self.kind, self.weights, output, target)

    @staticmethod
    def functional(fn: CompiledExpression, kind: str, weights: Tensor, output: Tensor, target: Tensor) -> Tensor:
        return loss_value(fn, kind, weights, output, target)

    def frozen(self) -> "FrozenLoss":
        """A parameter-free copy with the current weights as literals (a snapshot)."""
        return FrozenLoss(self.tree, self.kind, self.weights.detach())

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, expression={self.expression!r}"


class FrozenLoss(nn.Module):
    """The loss with fixed weights compiled into the code; no parameters, works on any device."""

    def __init__(self, tree: Node | str, kind: str, weights: Tensor | Sequence[float] | None = None) -> None:
        super().__init__()
        self.tree = parse(tree) if isinstance(tree, str) else tree
        self.kind = _check_kind(kind)
        if weights is None:
            weights = [1.0] * self.tree.num_edges
        self.compiled = compile_frozen_loss(self.tree, self.kind, weights)

    @property
    def weights(self) -> tuple[float, ...]:
        return self.compiled.weights

    @property
    def source(self) -> str:
        return self.compiled.source

    @property
    def function(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The plain function behind ``forward`` (skips nn.Module's call overhead in hot loops)."""
        return self.compiled.fn

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return self.compiled.fn(output, target)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, expression={str(self.tree)!r}"


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target)


def mean_squared_error(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output, target.reshape(output.shape).to(output.dtype))


def baseline_loss(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The task loss and baseline of DESIGN §1.8: cross-entropy or MSE, called as ``(output, target)``."""
    return {"classification": cross_entropy, "regression": mean_squared_error}[_check_kind(kind)]


task_loss = baseline_loss


# --------------------------------------------------------------------------- loss files
def weighted_sympy(tree: Node, weights: Sequence[float], *, exact: bool = False):
    """SymPy expression with each edge weight multiplied in (unprotected log/sqrt unless ``exact``)."""
    import sympy as sp

    from evomal.gp.primitives import sympy_function

    symbols = {"y": sp.Symbol("y", real=True), "f": sp.Symbol("f", real=True)}
    counter = iter(range(-1, tree.num_edges))

    def walk(node: Node):
        k = next(counter)
        if node.op in symbols:
            expr = symbols[node.op]
        elif node.op in CONSTANTS:
            expr = sp.Integer(int(CONSTANTS[node.op]))
        else:
            expr = sympy_function(node.op, exact)(*(walk(c) for c in node.children))
        return expr if k < 0 else sp.Float(weights[k]) * expr

    return walk(tree)


def readable_formula(tree: Node, weights: Sequence[float], digits: int = 4) -> tuple[str, str]:
    """(text, LaTeX) of the loss with its weights folded in, numbers rounded to ``digits`` significant.

    log and sqrt are shown without their 1e-7 clamp, for readability.
    """
    import sympy as sp

    expr = weighted_sympy(tree, weights)
    expr = expr.xreplace({a: sp.Float(float(a), digits) for a in expr.atoms(sp.Float)})
    return sp.sstr(expr), sp.latex(expr)


def _json_safe(obj):
    """Extras may carry inf/nan (a fitness); JSON has no such numbers, so they are stored as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return _json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


_RESERVED = ("format", "version", "expression", "tree", "kind", "num_edges", "weights", "formula", "latex")


def loss_document(tree: Node, kind: str, weights: Tensor | Sequence[float], **extra) -> dict:
    """The JSON content of a loss file."""
    _check_kind(kind)
    values = [float(w) for w in (weights.detach().cpu().tolist() if isinstance(weights, Tensor) else weights)]
    if len(values) != tree.num_edges:
        raise ValueError(f"{tree}: has {tree.num_edges} edges but {len(values)} weights were given")
    if not all(math.isfinite(w) for w in values):
        raise ValueError(f"{tree}: cannot save non-finite weights {values}")
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra fields {clash} would overwrite the loss file's own fields")
    formula, latex = readable_formula(tree, values)
    doc = {"format": FILE_FORMAT, "version": FILE_VERSION, "expression": str(tree), "tree": to_json(tree),
           "kind": kind, "num_edges": tree.num_edges, "weights": values, "formula": formula, "latex": latex}
    doc.update(_json_safe(extra))
    return doc


def save_loss(path: str | os.PathLike, tree: Node, kind: str, weights: Tensor | Sequence[float], **extra) -> dict:
    """Write a loss file (JSON, atomically) and return its content. ``extra`` fields are stored as given."""
    doc = loss_document(tree, kind, weights, **extra)
    atomic_write_bytes(path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    return doc


def load_loss(path: str | os.PathLike, *, trainable: bool = False,
              device: str | torch.device | None = None) -> CompiledLoss:
    """Read a loss file (e.g. ``best/loss.json``) into a :class:`CompiledLoss` for any training loop.

    The weights do not require grad unless ``trainable``; ``loss.frozen()`` is the fastest form for
    training a network with it. Raises ValueError naming the file when it is not a valid loss file.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a loss file (invalid JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a loss file (no 'format': {FILE_FORMAT!r})")
    if doc.get("version") != FILE_VERSION:
        raise ValueError(f"{path}: loss file version {doc.get('version')!r}, this evomal reads {FILE_VERSION}")
    try:
        tree = from_json(doc["tree"])
        weights = [float(w) for w in doc["weights"]]
        kind = _check_kind(doc["kind"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: damaged loss file ({type(exc).__name__}: {exc})") from None
    if str(tree) != doc.get("expression"):
        raise ValueError(f"{path}: 'tree' ({tree}) and 'expression' ({doc.get('expression')}) disagree")
    loss = CompiledLoss(tree, kind, torch.tensor(weights, dtype=torch.float32), trainable=trainable)
    loss.info = {k: v for k, v in doc.items() if k not in _RESERVED}
    return loss if device is None else loss.to(device)
