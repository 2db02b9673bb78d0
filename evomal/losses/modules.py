"""Loss modules of a batch (DESIGN §1.1): the compiled expression with its edge weights, and baselines.

Classification applies the expression to f = softmax(logits) and y = one-hot(target), sums over classes
and averages over the batch; regression applies it to the raw outputs and targets and averages.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evomal.gp.expressions import Node, parse
from evomal.losses.codegen import (KINDS, CompiledExpression, check_kind, compile_frozen_text, exec_function,
                                   literal, compile_expression)


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
                f"    return frozen(y, f).sum() * ({literal(scale)} / f.shape[0])\n")
    tail = ".mean()" if scale == 1.0 else f".sum() * ({literal(scale)} / f.numel())"
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
    frozen = compile_frozen_text(text, weights)
    source = frozen.source + "\n\n" + _batch_loss_source(kind, frozen.scale)
    return FrozenBatchLoss(text, kind, weights, source, exec_function(source, "loss", f"{kind} {text}"))


def compile_frozen_loss(tree: Node | str, kind: str, weights: Sequence[float] | Tensor) -> FrozenBatchLoss:
    """Compile (or fetch) the batch loss of ``tree`` with fixed ``weights`` for a task ``kind``."""
    text = str(tree) if isinstance(tree, Node) else str(parse(tree))
    if isinstance(weights, Tensor):
        weights = weights.detach().double().cpu().tolist()
    return _compile_batch_cached(text, check_kind(kind), tuple(float(w) for w in weights))


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
        self.kind = check_kind(kind)
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
        self.kind = check_kind(kind)
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
    return {"classification": cross_entropy, "regression": mean_squared_error}[check_kind(kind)]


task_loss = baseline_loss
