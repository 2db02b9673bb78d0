"""Canonical keys for the symbolic-equivalence filter (DESIGN §1.5.1).

Two expressions get the same key when a cheap SymPy canonicalisation shows they are the same
function. What is compared is the *unweighted* expression (every edge weight 1, DESIGN §1.3): after
local search the weights make e.g. ``sub(y, f)`` and ``add(y, mul(-1, f))`` different parametrised
families, but the GP archive treats them as one loss, as the reference's string archive would for
identical strings.

The algebra uses the unprotected forms (``log|a|``, ``sqrt|a|``, ``a / sqrt(1 + b^2)``) and identities
that hold almost everywhere: log|ab| = log|a| + log|b|, sqrt|ab| = sqrt|a| sqrt|b|, sign(a^2) = 1.
They differ from the protected torch forms only where an argument is (near) zero. Beware that with
one-hot targets y = 0 is no rare event: there log(max(|y f|, eps)) is a constant while
log(max(|y|, eps)) + log(max(|f|, eps)) still depends on f, so ``split_logs=False`` keeps a log of a
product whole. A subexpression that collapses to log(0) or similar (an infinity or NaN) makes the
unprotected form meaningless, so such expressions get a structural key instead.

Cost is bounded deterministically: before any SymPy work an estimate of the size of the expanded
forms (see _expansion_work) is compared with ``budget``; over budget, the key is structural. No
wall-clock limit is used, so a key never depends on machine load. Keys are stable across processes
and hash seeds for one SymPy version; another SymPy version may print some keys differently.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import Iterator

from evomal.gp.expressions import Node, parse

#: Default cost budget in units of _expansion_work (about 10-20 us of SymPy time each). At 20000 the
#: slowest keys measured (adversarial nested aq/mul/square chains) took about 0.2 s.
DEFAULT_BUDGET = 20000

_SYMPY_LOCK = threading.Lock()

_COMMUTATIVE = frozenset({"add", "mul", "min", "max"})


@dataclass(frozen=True)
class CanonicalKey:
    key: str  # equal keys <=> same loss, as far as the canonicalisation can tell
    method: str  # "sympy" | "structural" (fallback when over budget or degenerate)


class _Degenerate(Exception):
    """The unprotected form hits an infinity or NaN; use the structural key."""


def canonical_key(
    expression: str | Node, *, budget: int = DEFAULT_BUDGET, split_logs: bool = False
) -> CanonicalKey:
    """Key of ``expression``; keys of the two methods carry different prefixes and never collide.

    ``split_logs``: use log|ab| = log|a| + log|b| (see the module notes on y = 0).
    """
    text = str(expression) if isinstance(expression, Node) else str(parse(expression))
    return _cached_key(text, int(budget), bool(split_logs))


@functools.lru_cache(maxsize=4096)
def _cached_key(text: str, budget: int, split_logs: bool) -> CanonicalKey:
    tree = parse(text)
    if _expansion_work(tree) <= budget:
        try:
            return CanonicalKey("sympy:" + _sympy_key(tree, split_logs), "sympy")
        except _Degenerate:
            pass
    return CanonicalKey("tree:" + structural_key(tree), "structural")


# --------------------------------------------------------------------------- budget


def _expansion_work(tree: Node) -> int:
    """Estimated size of the expressions SymPy builds while canonicalising ``tree``.

    Bottom-up, each node's canonical (expanded) form is estimated as (terms, size), size counting
    symbols and operations over all terms. Products distribute: t1 * t2 terms whose sizes add up to
    t2 * s1 + t1 * s2. aq multiplies every term of its numerator by the atom (1 + b^2)^(-1/2), whose
    own expansion is carried along; that repetition is what explodes for nested aq. Functions turn
    their argument into one atom. The work is the sum of the estimated sizes over all nodes; it
    tracks the measured time (about 10-20 us per unit) within a small factor, and overestimates
    repeated squares, whose terms merge.
    """
    work = 0

    def estimate(node: Node) -> tuple[int, int]:
        nonlocal work
        if node.is_terminal:
            return 1, 1
        args = [estimate(c) for c in node.children]
        op = node.op
        if op in ("add", "sub"):
            (t1, s1), (t2, s2) = args
            out = (t1 + t2, s1 + s2 + 1)
        elif op == "mul":
            (t1, s1), (t2, s2) = args
            out = (t1 * t2, t2 * s1 + t1 * s2)
        elif op == "square":
            (t, s), = args
            out = (t * (t + 1) // 2, t * s + 1)
        elif op == "aq":
            (t1, s1), (t2, s2) = args
            atom = t2 * s2 + 3  # 1 + b^2 expanded, raised to -1/2
            out = (t1, s1 + t1 * atom)
        elif op == "log":
            (t, s), = args
            out = (min(s, node.size), 2 * s)  # one log term per factor of the argument
        else:  # abs, sqrt, sign, tanh, min, max: one atom (or a product of atoms)
            out = (1, sum(s for _, s in args) + 1)
        work += out[1]
        return out

    estimate(tree)
    return work


# --------------------------------------------------------------------------- SymPy canonical form


@contextlib.contextmanager
def _seeded_sympy_assumptions() -> Iterator[None]:
    """Seed SymPy's private RNG that shuffles the order of assumption deductions; restore it after.

    Deductions should not depend on that order, but SymPy shuffles precisely because it is not
    guaranteed, and keys must be equal across processes. A lock keeps threads from interleaving.
    """
    from sympy.core import random as sympy_random

    rng = getattr(sympy_random, "_assumptions_rng", None)  # private; absent in some versions
    with _SYMPY_LOCK:
        if rng is None:
            yield
            return
        saved = rng.getstate()
        rng.seed(0)
        try:
            yield
        finally:
            rng.setstate(saved)


def _sympy_key(tree: Node, split_logs: bool) -> str:
    import sympy as sp

    with _seeded_sympy_assumptions():
        expr = _canonical_sympy(tree, split_logs)
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise _Degenerate
    # str() orders terms by SymPy's deterministic sort key, independent of hash seeds.
    return sp.sstr(expr, order="lex")


def _canonical_sympy(tree: Node, split_logs: bool = False):
    """Bottom-up: children are canonical (expanded) before their parent is combined."""
    import sympy as sp

    symbols = {"y": sp.Symbol("y", real=True), "f": sp.Symbol("f", real=True)}
    expand = functools.partial(
        sp.expand, deep=False, mul=True, multinomial=True, power_exp=False, power_base=False, log=False
    )

    def walk(node: Node):
        op = node.op
        if op in symbols:
            return symbols[op]
        if node.is_terminal:
            return sp.Integer(int(op))
        a = [walk(c) for c in node.children]
        if op == "add":
            return expand(a[0] + a[1])
        if op == "sub":
            return expand(a[0] - a[1])
        if op == "mul":
            return expand(a[0] * a[1])
        if op == "square":
            return expand(a[0] ** 2)
        if op == "aq":
            # deep=False does not reach a power nested in a sum, so expand b^2 on its own first
            return expand(a[0] * (1 + expand(a[1] ** 2)) ** sp.Rational(-1, 2))
        if op == "abs":
            return _abs(a[0])
        if op == "log":
            return _log(a[0]) if split_logs else sp.log(_abs(a[0]))
        if op == "sqrt":
            return _sqrt(a[0])
        if op == "sign":
            return _sign(a[0])
        if op == "tanh":
            return sp.tanh(a[0])
        if op in ("min", "max"):
            return _lattice(sp.Min if op == "min" else sp.Max, a[0], a[1])
        raise AssertionError(f"no canonical rule for {op}")

    return walk(tree)


def _lattice(cls, a, b):
    """Min/Max without SymPy's pairwise comparisons, which dominated the cost (assumption queries
    on large differences). Unevaluated, SymPy still orders the arguments canonically."""
    if a == b:
        return a
    if a.is_Number and b.is_Number:
        return cls(a, b)
    return cls(a, b, evaluate=False)


def _factors(expr):
    """``expr`` as (c, [(base, exponent)]) with expr = c * prod(base**exponent).

    For a sum, the numeric content and the powers common to every term are pulled out and the
    remaining sum is one more base, e.g. 2*f*y + 4*y -> (2, [(y, 1), (f + 2, 1)]). This is SymPy's
    factor_terms restricted to the top level: factor_terms also rebuilds every nested function,
    which re-evaluates Min/Max and was the main cost.
    """
    import sympy as sp

    if expr.is_Number:
        return expr, []
    terms = [t.as_coeff_Mul() for t in sp.Add.make_args(expr)]
    powers = [dict(p.as_base_exp() for p in sp.Mul.make_args(rest) if p != 1) for _, rest in terms]
    common = {}
    for base in set(powers[0]).intersection(*powers[1:]):
        exps = [p[base] for p in powers]
        if all(e.is_positive for e in exps):
            common[base] = min(exps)
        elif all(e.is_negative for e in exps):
            common[base] = max(exps)
    if len(terms) == 1:
        coeff = terms[0][0]
    else:
        coeffs = [c for c, _ in terms]
        if not all(c.is_Rational for c in coeffs):
            return sp.Integer(1), [(expr, sp.Integer(1))]
        coeff = sp.Rational(sp.igcd(*(c.p for c in coeffs)), sp.ilcm(*(c.q for c in coeffs)))
    monomial = sp.Mul(*(b**e for b, e in common.items()))
    rest = sp.Add(*(c / coeff * r / monomial for c, r in terms))
    if len(terms) > 1 and rest.could_extract_minus_sign():
        coeff, rest = -coeff, -rest
    factors = sorted(common.items(), key=lambda be: sp.default_sort_key(be[0]))
    if rest != 1:
        factors.append((rest, sp.Integer(1)))
    return coeff, factors


def _log_rational(q):
    """log|q| for a rational q as a sum over its prime factors, e.g. log(6) = log(2) + log(3)."""
    import sympy as sp

    if q == 0:
        raise _Degenerate
    return sp.Add(*(e * sp.log(p) for p, e in sp.factorrat(abs(q)).items()))


def _abs(x):
    import sympy as sp

    coeff, factors = _factors(x)
    return sp.Abs(coeff) * sp.Mul(*(sp.Abs(b) ** e for b, e in factors))


def _log(x):
    """log|x| split over factors: log|c * prod b^e| = log|c| + sum e log|b|."""
    import sympy as sp

    coeff, factors = _factors(x)
    if not coeff.is_Rational:  # cannot happen with integer constants; keep log|x| whole
        return sp.log(sp.Abs(x))
    return sp.expand(_log_rational(coeff) + sp.Add(*(e * sp.log(sp.Abs(b)) for b, e in factors)), deep=False)


def _sqrt(x):
    """sqrt|x| split over factors: |c|^(1/2) * prod |b|^(e/2)."""
    import sympy as sp

    coeff, factors = _factors(x)
    if coeff == 0:
        return sp.Integer(0)
    return sp.sqrt(sp.Abs(coeff)) * sp.Mul(*(sp.Abs(b) ** (e / 2) for b, e in factors))


def _sign(x):
    """sign of a product = product of signs; even powers and non-negative factors drop out (a.e.)."""
    import sympy as sp

    coeff, factors = _factors(x)
    out = sp.sign(coeff)
    for b, e in factors:
        if (e.is_integer and e.is_even) or b.is_nonnegative:
            continue
        out *= sp.sign(b)
    return out


# --------------------------------------------------------------------------- structural fallback


def structural_key(tree: Node) -> str:
    """Text form with commutative arguments sorted and trivial constant folds applied.

    Folds: mul by 1 vanishes; min/max of identical arguments is that argument; sign, abs, square
    of a constant and abs(abs(a)) reduce. Sorting is by the children's own keys, so it is canonical.
    """

    def walk(node: Node) -> str:
        if node.is_terminal:
            return node.op
        args = [walk(c) for c in node.children]
        op = node.op
        if op in _COMMUTATIVE:
            args.sort()
        if op == "mul" and "1" in args:
            args.remove("1")
            return args[0]
        if op in ("min", "max") and args[0] == args[1]:
            return args[0]
        if op == "sign" and args[0] in ("1", "-1"):
            return args[0]
        if op in ("abs", "square") and args[0] in ("1", "-1"):
            return "1"
        if op == "abs" and args[0].startswith("abs("):
            return args[0]
        return f"{op}({', '.join(args)})"

    return walk(tree)
