"""Numerical check of the symbolic-equivalence keys (DESIGN §1.5.1): do key-equal losses compute alike?

Used by tests/test_canonical_soundness.py and bench/bench_filters.py. Expressions come from the
project's own GP (:func:`sample_expressions`: init_population and breed, as the pipeline runs them).
Two expressions agree when their values and their gradients with respect to f agree at every point of
:func:`check_points` (one-hot targets with softmax predictions, and regression values including exact
zeros, ties y = f and y = -f, values below the clamp 1e-7, +-1, small and large).

Two stages, so that rounding is never mistaken for unsoundness: float64 torch autograd through the
protected primitives of evomal.gp.primitives (the semantics the pipeline trains with) compares all
points; a point where the two disagree beyond relative 1e-9 is re-evaluated in exact-real arithmetic
(mpmath, 50 and then 500 digits, forward-mode derivatives with torch's conventions at kinks: sign' = 0,
|a|' = sign(a), the clamp of log/sqrt passes the gradient where |a| >= 1e-7, min/max split it at a
tie). Only a disagreement that survives both precisions counts: e.g. ((y + f) - f) - y is 0 in exact
arithmetic but not always in float64, and the key that maps it to 0 is sound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from evomal.gp.expressions import Node, parse
from evomal.gp.primitives import CONSTANTS, EPS, PRIMITIVES

RTOL = 1e-9


# --------------------------------------------------------------------------- expressions


def sample_expressions(n: int, *, first_seed: int = 0, population: int = 25, generations: int = 3) -> list[str]:
    """``n`` expressions: per seed, generation 0 from init_population and ``generations - 1`` bred ones.

    The fitness that drives breeding is a seeded stand-in (a third of the individuals rejected, +inf),
    so that selection, crossover, mutation, copies and elites all occur as in a search.
    """
    from evomal.gp.operators import breed, derive_rng, init_population

    out: list[str] = []
    seed = first_seed
    while len(out) < n:
        pop = init_population(population, seed=seed)
        out.extend(ind.expression for ind in pop)
        for g in range(1, generations):
            rng = derive_rng(seed, "soundness-fitness", g)
            fitness = {ind.id: (math.inf if rng.random() < 1 / 3 else rng.random()) for ind in pop}
            pop = breed(pop, fitness, seed=seed, generation=g, size=population)
            out.extend(ind.expression for ind in pop)
        seed += 1
    return out[:n]


# --------------------------------------------------------------------------- inputs


def check_points() -> tuple[list[float], list[float]]:
    """(y, f) as two lists of floats: classification then regression points."""
    import torch

    ys: list[float] = []
    fs: list[float] = []
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2.0
    extreme = torch.tensor([[30.0, 0.0, -30.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    logits = torch.cat([logits, extreme])
    probs = torch.softmax(logits, dim=1)  # includes values far below the clamp (about 1e-26) and ties
    for row, p in enumerate(probs):
        target = row % p.numel()
        for c, value in enumerate(p.tolist()):
            ys.append(1.0 if c == target else 0.0)
            fs.append(value)
    values = [0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -3.0, 1e-4, -1e-4, 1e-8, -1e-8, EPS, 0.3, 1e3, -1e3]
    for y in values:
        for f in values:
            ys.append(y)
            fs.append(f)
    return ys, fs


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

    names = {a.__name__: a for a in algebra._ATOMS}
    names.update(y=algebra.Y, f=algebra.F, eps=algebra.EPS_SYMBOL)
    return _program_of_form(sp.parse_expr(body, local_dict=names))


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


def _float_close(a, b):
    import torch

    finite = torch.isfinite(a) & torch.isfinite(b)
    scale = torch.maximum(a.abs(), b.abs())
    return finite & ((a - b).abs() <= RTOL * scale)


# --------------------------------------------------------------------------- exact reals (mpmath)


def evaluate_exact(program: tuple, y: float, f: float, dps: int = 50):
    """(value, d/df) of ``program`` at one point in mpmath at ``dps`` digits, torch's conventions at kinks."""
    import mpmath

    with mpmath.workdps(dps):
        mp = mpmath.mpf
        eps = mp(EPS)
        yv, fv = mp(y), mp(f)
        zero, one = mp(0), mp(1)

        def walk(p):
            op = p[0]
            if op == "y":
                return yv, zero
            if op == "f":
                return fv, one
            if op == "eps":
                return eps, zero
            if op == "num":
                return mp(p[1].p) / mp(p[1].q), zero
            if op == "pow":
                a, da = walk(p[1])
                e = p[2]
                if not e.is_Integer and a <= 0:
                    raise ValueError(f"power {e} of a non-positive base in {p}")
                e = int(e) if e.is_Integer else mp(e.p) / mp(e.q)
                return a**e, e * a ** (e - 1) * da
            args = [walk(c) for c in p[1:]]
            if op == "sum":
                return mpmath.fsum(a for a, _ in args), mpmath.fsum(d for _, d in args)
            if op == "prod":
                v, d = args[0]
                for b, db in args[1:]:
                    v, d = v * b, d * b + v * db
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
                r = 1 / mpmath.sqrt(1 + b * b)
                return a * r, da * r - a * b * db * r**3
            if op == "sign":
                return mpmath.sign(a), zero
            if op == "square":
                return a * a, 2 * a * da
            if op == "abs":
                return abs(a), mpmath.sign(a) * da
            if op == "ln":
                return mpmath.log(a), da / a
            if op in ("log", "sqrt"):
                m = abs(a)
                passes = m >= eps
                m = m if passes else eps
                dm = mpmath.sign(a) * da if passes else zero
                if op == "log":
                    return mpmath.log(m), dm / m
                s = mpmath.sqrt(m)
                return s, dm / (2 * s)
            if op == "tanh":
                t = mpmath.tanh(a)
                return t, (1 - t * t) * da
            if op in ("min", "max"):
                b, db = args[1]
                if a == b:
                    return a, (da + db) / 2
                first = (a < b) == (op == "min")
                return (a, da) if first else (b, db)
            raise AssertionError(f"no exact rule for {op}")

        v, d = walk(program)
        return +v, +d


def _exact_close(a, b) -> bool:
    return abs(a - b) <= RTOL * max(abs(a), abs(b)) + 1e-40


def _exact_disagree(p1: tuple, p2: tuple, y: float, f: float) -> tuple | None:
    """None if the two agree at (y, f) in exact arithmetic (at 50 or else 500 digits), else the values."""
    for dps in (50, 500):
        v1, d1 = evaluate_exact(p1, y, f, dps)
        v2, d2 = evaluate_exact(p2, y, f, dps)
        if _exact_close(v1, v2) and _exact_close(d1, d2):
            return None
    return (float(v1), float(v2), float(d1), float(d2))


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class Disagreement:
    key: str
    a: str
    b: str
    y: float
    f: float
    values: tuple  # (value a, value b, d/df a, d/df b), exact arithmetic

    @property
    def gradient_only(self) -> bool:
        va, vb, _, _ = self.values
        return abs(va - vb) <= RTOL * max(abs(va), abs(vb))


def group_by_key(expressions: Iterable[str], key_of) -> dict[str, list[str]]:
    """key -> distinct expression strings in first-seen order."""
    groups: dict[str, list[str]] = {}
    for text in expressions:
        members = groups.setdefault(key_of(text), [])
        if text not in members:
            members.append(text)
    return groups


def _compare(p1, p2, ev1, ev2, ys, fs, per_pair):
    """Points where two programs disagree (float64 first, exact arithmetic to confirm)."""
    (v1, g1), (v2, g2) = ev1, ev2
    suspect = ~(_float_close(v1, v2) & _float_close(g1, g2))
    out = []
    for i in suspect.nonzero().flatten().tolist():
        values = _exact_disagree(p1, p2, ys[i], fs[i])
        if values is not None:
            out.append((ys[i], fs[i], values))
            if len(out) >= per_pair:
                break
    return out


def _tensors(points):
    import torch

    ys, fs = points if points is not None else check_points()
    return ys, fs, torch.tensor(ys, dtype=torch.float64), torch.tensor(fs, dtype=torch.float64)


def find_disagreements(groups: dict[str, list[str]], points=None, *, per_pair: int = 1) -> list[Disagreement]:
    """Every pair of distinct expressions sharing a key, checked at every point; at most ``per_pair``
    disagreeing points are reported per pair (the first ones)."""
    ys, fs, y, f = _tensors(points)
    found: list[Disagreement] = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        programs = [program_of_tree(parse(m)) for m in members]
        evaluated = [evaluate_float(p, y, f) for p in programs]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                for py, pf, values in _compare(programs[i], programs[j], evaluated[i], evaluated[j], ys, fs, per_pair):
                    found.append(Disagreement(key, members[i], members[j], py, pf, values))
    return found


def find_key_disagreements(keys: dict[str, str], points=None, *, per_pair: int = 1) -> list[Disagreement]:
    """Each expression against the function its key denotes (``keys``: expression -> key string).

    Stronger than comparing pairs: if every expression computes what its key denotes, no two with
    equal keys can differ, whether or not the sample holds both. ``b`` of a report is the key.
    """
    ys, fs, y, f = _tensors(points)
    found: list[Disagreement] = []
    for text, key in keys.items():
        p1, p2 = program_of_tree(parse(text)), program_of_key(key)
        for py, pf, values in _compare(p1, p2, evaluate_float(p1, y, f), evaluate_float(p2, y, f), ys, fs, per_pair):
            found.append(Disagreement(key, text, key, py, pf, values))
    return found
