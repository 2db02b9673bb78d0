"""Numeric evaluation of expressions and of canonical forms, with d/df: float64 through torch and
exact reals (mpmath, then SymPy), with torch's conventions at kinks. Used by evomal.gp.soundness."""
from __future__ import annotations

import contextlib
import re

from evomal.gp.expressions import Node, parse
from evomal.gp.primitives import CONSTANTS, EPS, PRIMITIVES

RTOL = 1e-9


# --------------------------------------------------------------------------- programs
# Expressions and canonical forms are both evaluated as small programs of nested tuples:
# ("y",), ("f",), ("eps",), ("num", Rational), (primitive name, *args) with the protected semantics,
# and for canonical forms also ("sum", *args), ("prod", *args), ("pow", base, Rational) and ("ln", c)
# (the plain log of a positive constant).


def program_of_tree(tree: Node) -> tuple:
    if tree.op in ("y", "f"):
        return (tree.op,)
    if tree.op in CONSTANTS:
        import sympy as sp

        return ("num", sp.Integer(int(CONSTANTS[tree.op])))
    return (tree.op, *(program_of_tree(c) for c in tree.children))


def program_of_key(key: str) -> tuple:
    """The function a key denotes: a structural key is an expression, a SymPy key a canonical form."""
    method, _, body = key.partition(":")
    if method == "tree":
        return program_of_tree(parse(body))
    if method != "sympy":
        raise ValueError(f"unknown key method in {key!r}")
    import sympy as sp

    from evomal.gp import algebra

    names = {a.__name__: a for a in algebra.ATOMS}
    names.update(y=algebra.Y, f=algebra.F, eps=algebra.EPS_SYMBOL, log=sp.log, tanh=sp.tanh, sqrt=sp.sqrt,
                 Integer=sp.Integer)
    # SymPy prints no floats and these names hold no digits: integer literals become exact Integers
    source = re.sub(r"\b(\d+)\b", r"Integer(\1)", body)
    return _program_of_form(eval(source, {"__builtins__": {}}, names))  # noqa: S307 - our own key text


def _program_of_form(x) -> tuple:
    import sympy as sp

    from evomal.gp import algebra

    if x == algebra.Y:
        return ("y",)
    if x == algebra.F:
        return ("f",)
    if x == algebra.EPS_SYMBOL:
        return ("eps",)
    if x.is_Rational:
        return ("num", x)
    if x.is_Add or x.is_Mul:
        return ("sum" if x.is_Add else "prod", *(_program_of_form(a) for a in x.args))
    if x.is_Pow:
        if not x.exp.is_Rational:
            raise ValueError(f"exponent {x.exp} in {x}")
        return ("pow", _program_of_form(x.base), x.exp)
    names = {algebra.plog: "log", algebra.psqrt: "sqrt", algebra.pabs: "abs", algebra.psign: "sign",
             algebra.ptanh: "tanh", algebra.pmin: "min", algebra.pmax: "max", sp.log: "ln", sp.tanh: "tanh"}
    if x.func in names:
        return (names[x.func], *(_program_of_form(a) for a in x.args))
    raise ValueError(f"no numeric meaning for {x.func} in {x}")


# --------------------------------------------------------------------------- float64 (torch)


def evaluate_float(program: tuple, y, f):
    """Values and d/df of ``program`` at the points (float64 tensors), through torch autograd."""
    import torch

    f = f.detach().clone().requires_grad_(True)

    def walk(p):
        op = p[0]
        if op == "y":
            return y
        if op == "f":
            return f
        if op == "eps":
            return torch.full_like(y, EPS)
        if op == "num":
            return torch.full_like(y, float(p[1]))
        if op == "pow":
            e = p[2]
            return walk(p[1]) ** (int(e) if e.is_Integer else float(e))
        args = [walk(c) for c in p[1:]]
        if op == "sum":
            return torch.stack(args).sum(0)
        if op == "prod":
            out = args[0]
            for a in args[1:]:
                out = out * a
            return out
        if op == "ln":
            return torch.log(args[0])
        return PRIMITIVES[op].torch_fn(*args)

    out = walk(program)
    grad = None
    if out.requires_grad:
        (grad,) = torch.autograd.grad(out.sum(), f, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(y)
    return out.detach(), grad.detach()


def float_close(a, b):
    import torch

    finite = torch.isfinite(a) & torch.isfinite(b)
    scale = torch.maximum(a.abs(), b.abs())
    return finite & ((a - b).abs() <= RTOL * scale)


# --------------------------------------------------------------------------- exact reals


class _Mpmath:
    """Fast: mpmath at 80 digits. Kinks are decided on rounded values, so at a point that lies on a
    kink only mathematically (a tie of two irrational values, sqrt(eps)^2 against eps) it can be wrong:
    a disagreement here goes on to _Exact."""

    def __init__(self, y: float, f: float, dps: int = 80) -> None:
        import mpmath

        self.m = mpmath
        self.dps = dps
        self.y, self.f, self.eps = mpmath.mpf(y), mpmath.mpf(f), mpmath.mpf(EPS)

    def context(self):
        return self.m.workdps(self.dps)

    def num(self, q):
        return self.m.mpf(q.p) / self.m.mpf(q.q)

    def root(self, a, e):  # a**e, e a non-integer Rational, a > 0
        return a ** (self.m.mpf(e.p) / self.m.mpf(e.q))

    def sqrt(self, a):
        return self.m.sqrt(a)

    def log(self, a):
        return self.m.log(a)

    def tanh(self, a):
        return self.m.tanh(a)

    def cmp(self, a, b) -> int:
        return (a > b) - (a < b)

    def close(self, a, b) -> bool:
        return abs(a - b) <= RTOL * max(abs(a), abs(b)) + self.m.mpf(10) ** (-2 * self.dps // 3)


class _Exact:
    """Exact: SymPy numbers, with y, f and eps as exact rationals (they are binary floats). A kink
    (a tie, |a| = eps, a = 0) is decided on the difference, evaluated by SymPy to 60 correct digits
    with up to 10,000 bits of working precision (0 if even that finds no digit); values are compared
    numerically at 60 digits."""

    def __init__(self, y: float, f: float) -> None:
        import sympy as sp

        self.sp = sp
        self.y, self.f, self.eps = sp.Rational(y), sp.Rational(f), sp.Rational(EPS)

    def context(self):
        return contextlib.nullcontext()

    def num(self, q):
        return q

    def root(self, a, e):
        return a**e

    def sqrt(self, a):
        return self.sp.sqrt(a)

    def log(self, a):
        return self.sp.log(a)

    def tanh(self, a):
        return self.sp.tanh(a)

    def cmp(self, a, b) -> int:
        d = a - b
        if d.is_Number:
            return int(bool(d > 0)) - int(bool(d < 0))
        v = d.evalf(60, maxn=10000)  # adaptive: up to 10,000 bits of working precision
        if v.is_Number and v != 0 and getattr(v, "_prec", 0) >= 100:
            return 1 if v > 0 else -1
        return 0  # zero to thousands of digits: a tie (or a = 0) that SymPy cannot prove symbolically

    def close(self, a, b) -> bool:
        va, vb = a.evalf(60, maxn=10000), b.evalf(60, maxn=10000)
        return bool(abs(va - vb) <= RTOL * max(abs(va), abs(vb)) + self.sp.Float("1e-40", 60))


class _Undecided(ArithmeticError):
    """Rounding made the fast backend leave the domain (a power of a positive base came out <= 0)."""


def evaluate_exact(program: tuple, y: float, f: float, backend: str = "mpmath"):
    """(value, d/df) of ``program`` at one point in exact-real arithmetic (``backend`` "mpmath": 80
    digits, or "exact": SymPy), with torch's conventions at kinks; also returns the backend."""
    num = _Mpmath(y, f) if backend == "mpmath" else _Exact(y, f)
    zero, one = num.num(_ZERO), num.num(_ONE)

    def sign(a):
        return num.num(_RATIONALS[num.cmp(a, zero)])

    def walk(p):
        op = p[0]
        if op == "y":
            return num.y, zero
        if op == "f":
            return num.f, zero + one
        if op == "eps":
            return num.eps, zero
        if op == "num":
            return num.num(p[1]), zero
        if op == "pow":
            a, da = walk(p[1])
            e = p[2]
            if e.is_Integer:
                k = int(e)
                return a**k, k * a ** (k - 1) * da
            if num.cmp(a, zero) <= 0:  # not in exact arithmetic (the base is positive); rounding
                raise _Undecided(f"power {e} of a non-positive base in {p}")
            return num.root(a, e), num.num(e) * num.root(a, e - 1) * da
        args = [walk(c) for c in p[1:]]
        if op in ("sum", "prod"):
            v, d = args[0]
            for b, db in args[1:]:
                v, d = (v + b, d + db) if op == "sum" else (v * b, d * b + v * db)
            return v, d
        (a, da) = args[0]
        if op == "add":
            return a + args[1][0], da + args[1][1]
        if op == "sub":
            return a - args[1][0], da - args[1][1]
        if op == "mul":
            b, db = args[1]
            return a * b, da * b + a * db
        if op == "aq":
            b, db = args[1]
            r = 1 / num.sqrt(1 + b * b)
            return a * r, da * r - a * b * db * r**3
        if op == "sign":
            return sign(a), zero
        if op == "square":
            return a * a, 2 * a * da
        if op == "abs":
            s = sign(a)
            return s * a, s * da
        if op == "ln":
            return num.log(a), da / a
        if op in ("log", "sqrt"):
            s = sign(a)
            m = s * a
            passes = num.cmp(m, num.eps) >= 0
            m, dm = (m, s * da) if passes else (num.eps, zero)
            if op == "log":
                return num.log(m), dm / m
            r = num.sqrt(m)
            return r, dm / (2 * r)
        if op == "tanh":
            t = num.tanh(a)
            return t, (1 - t * t) * da
        if op in ("min", "max"):
            b, db = args[1]
            c = num.cmp(a, b)
            if c == 0:
                return a, (da + db) / 2
            first = (c < 0) == (op == "min")
            return (a, da) if first else (b, db)
        raise AssertionError(f"no exact rule for {op}")

    with num.context():
        v, d = walk(program)
        return +v, +d, num


def _rationals():
    import sympy as sp

    return sp.Integer(0), sp.Integer(1), {-1: sp.Integer(-1), 0: sp.Integer(0), 1: sp.Integer(1)}


_ZERO, _ONE, _RATIONALS = _rationals()


def exact_disagree(p1: tuple, p2: tuple, y: float, f: float) -> tuple | None:
    """None if the two agree at (y, f) in exact arithmetic (mpmath first; SymPy decides), else the values."""
    for backend in ("mpmath", "exact"):
        try:
            v1, d1, num = evaluate_exact(p1, y, f, backend)
            v2, d2, _ = evaluate_exact(p2, y, f, backend)
        except _Undecided:
            if backend == "exact":
                raise
            continue
        with num.context():
            if num.close(v1, v2) and num.close(d1, d2):
                return None
    return tuple(float(x) for x in (v1, v2, d1, d2))
