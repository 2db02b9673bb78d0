"""The search space of DESIGN §1.1: terminals, the 12 primitives, their protected torch and SymPy forms.

One table drives everything else (parsing, GP, compilation, algebra), so a primitive is defined once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

EPS = 1e-7

#: Terminals as they are written in the text form. Constants are edge-weighted like any node.
VARIABLES = ("y", "f")
CONSTANTS = {"1": 1.0, "-1": -1.0}
TERMINALS = VARIABLES + tuple(CONSTANTS)


def aq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Analytic quotient: a protected division that is smooth everywhere."""
    return a * torch.rsqrt(1.0 + b * b)


def plog(a: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.clamp(a.abs(), min=EPS))


def psqrt(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(a.abs(), min=EPS))


@dataclass(frozen=True)
class Primitive:
    name: str
    arity: int
    torch_fn: Callable[..., torch.Tensor]
    #: Python expression template of the compiled code; {0}, {1} are argument names.
    code: str


PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        Primitive("add", 2, torch.add, "{0} + {1}"),
        Primitive("sub", 2, torch.sub, "{0} - {1}"),
        Primitive("mul", 2, torch.mul, "{0} * {1}"),
        Primitive("aq", 2, aq, "{0} * torch.rsqrt(1.0 + {1} * {1})"),
        Primitive("sign", 1, torch.sign, "torch.sign({0})"),
        Primitive("square", 1, torch.square, "{0} * {0}"),
        Primitive("abs", 1, torch.abs, "torch.abs({0})"),
        Primitive("log", 1, plog, "torch.log(torch.clamp(torch.abs({0}), min=%r))" % EPS),
        Primitive("sqrt", 1, psqrt, "torch.sqrt(torch.clamp(torch.abs({0}), min=%r))" % EPS),
        Primitive("tanh", 1, torch.tanh, "torch.tanh({0})"),
        Primitive("min", 2, torch.minimum, "torch.minimum({0}, {1})"),
        Primitive("max", 2, torch.maximum, "torch.maximum({0}, {1})"),
    )
}

#: Operators used to repair a tree that lacks y or f (DESIGN §1.1).
REPAIR_OPS = ("add", "sub", "mul", "aq")


def sympy_function(name: str, exact: bool = True):
    """SymPy counterpart of a primitive.

    ``exact=True`` keeps the protection (clamps) so values match the torch form bit for bit in float64;
    ``exact=False`` drops it, the form used for algebraic canonicalisation where the clamp only
    obscures equalities such as log(a*b) = log(a) + log(b).
    """
    import sympy as sp

    eps = sp.Float(EPS)
    table = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "aq": lambda a, b: a / sp.sqrt(1 + b**2),
        "sign": sp.sign,
        "square": lambda a: a**2,
        "abs": sp.Abs,
        "log": (lambda a: sp.log(sp.Max(sp.Abs(a), eps))) if exact else (lambda a: sp.log(sp.Abs(a))),
        "sqrt": (lambda a: sp.sqrt(sp.Max(sp.Abs(a), eps))) if exact else (lambda a: sp.sqrt(sp.Abs(a))),
        "tanh": sp.tanh,
        "min": sp.Min,
        "max": sp.Max,
    }
    return table[name]
