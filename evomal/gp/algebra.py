"""Sound canonical forms of loss expressions under the protected semantics (DESIGN §1.1, §1.5.1).

A canonical form is a SymPy polynomial, expanded, over the variables y and f and *atoms*: the
primitives that are not polynomial, as uninterpreted functions of their canonical arguments
(``plog``, ``psqrt``, ``pabs``, ``psign``, ``ptanh``, ``pmin``, ``pmax``), the positive powers
(1 + b^2)^(-1/2) of the analytic quotient, and exact constants. The clamp 1e-7 of the protected log
and sqrt is the positive symbol ``eps``, so plog(0) = log(eps) and psqrt(0) = sqrt(eps) stay exact.

Why this is sound, i.e. equal forms compute equal values *and* equal torch gradients: atoms are
uninterpreted, so SymPy applies no identity of the unprotected functions (no log|ab| = log|a| +
log|b|, no sqrt(x^2) = |x|); polynomial identities hold for values and for gradients, because torch's
backward obeys the sum and product rules whatever the gradient of each atom is, kinks included. The
few rules beyond the ring are in evomal.gp.rules; this module holds the vocabulary and the
predicates they rest on (constants decided numerically, bounds, signs, factors).

Every power with an exponent other than a positive integer has a positive base: the only sources are
aq's (1 + b^2)^(-1/2), psqrt of a provably positive argument, and positive constants.
"""
from __future__ import annotations

import math
from functools import lru_cache

import sympy as sp

from evomal.gp.primitives import EPS

Y = sp.Symbol("y", real=True)
F = sp.Symbol("f", real=True)
EPS_SYMBOL = sp.Symbol("eps", positive=True)
_EPS_EXACT = sp.Rational(EPS)  # the float 1e-7, exactly
_VARIABLES = frozenset({Y, F})
HALF = sp.Rational(1, 2)
ABOVE_EPS = EPS * (1 + 1e-9)  # margins of the numeric comparisons with the clamp
BELOW_EPS = EPS * (1 - 1e-9)
_UNDECIDED = 1e-25  # a constant closer to 0 than this is not given a sign


class Unsupported(Exception):
    """No sound rule applies in a way this module can represent; the caller keys structurally."""


class _Atom(sp.Function):
    """A primitive kept whole: no evaluation rules, no assumptions."""

    @classmethod
    def eval(cls, *args):
        return None


class plog(_Atom):
    nargs = 1


class psqrt(_Atom):
    nargs = 1


class pabs(_Atom):
    nargs = 1


class psign(_Atom):
    nargs = 1


class ptanh(_Atom):
    nargs = 1


class pmin(_Atom):
    nargs = 2


class pmax(_Atom):
    nargs = 2


ATOMS = (plog, psqrt, pabs, psign, ptanh, pmin, pmax)


def expand(x):
    return sp.expand(x, deep=False, mul=True, multinomial=True, power_exp=False, power_base=False, log=False)


def sort_key(x):
    return sp.default_sort_key(x)


@lru_cache(maxsize=65536)
def is_constant(x) -> bool:
    return not (x.free_symbols & _VARIABLES)


# --------------------------------------------------------------------------- constants


@lru_cache(maxsize=8192)
def constant_value(c) -> float | None:
    """Numeric value of a constant (30 digits, eps substituted); None if SymPy gives no number."""
    try:
        if c.is_Number:
            return float(c)
        v = c.evalf(30, subs={EPS_SYMBOL: _EPS_EXACT})
        return float(v) if v.is_Number else None
    except OverflowError:
        return None


def constant_sign(c) -> int | None:
    if c.is_Number:
        return 0 if c == 0 else (1 if c > 0 else -1)
    v = constant_value(c)
    if v is None or not math.isfinite(v) or abs(v) < _UNDECIDED:
        return None
    if abs(v) < 1e-6:  # small: make sure a cancellation did not leave rounding noise
        v2 = c.evalf(60, subs={EPS_SYMBOL: _EPS_EXACT})
        if not v2.is_Number or abs(v2) < _UNDECIDED or (v2 > 0) != (v > 0):
            return None
    return 1 if v > 0 else -1


def sign_normal(x):
    """(s, n) with x = s * n, s = +-1: n is the one of x, -x without a leading minus sign (SymPy's
    could_extract_minus_sign), else the smaller in SymPy's sort order; a function of the pair."""
    neg = -x
    minus_x, minus_neg = x.could_extract_minus_sign(), neg.could_extract_minus_sign()
    if minus_x != minus_neg:
        return (-1, neg) if minus_x else (1, x)
    return (-1, neg) if sort_key(neg) < sort_key(x) else (1, x)


def log_rational(q):
    """log(q) of a positive rational as a sum over its prime factors, e.g. log(6) = log(2) + log(3)."""
    return sp.Add(*(e * sp.log(p) for p, e in sp.factorrat(q).items()))


def log_constant(c):
    """log(c) of a positive constant, exact: split over the factors of c, each made positive (a log of
    a negative factor would be complex); rationals split over primes. Whole if a sign is undecided."""
    if c.is_Rational:
        return log_rational(c)
    coeff, rest = c.as_coeff_Mul()
    sign = 1 if coeff > 0 else -1
    terms = [log_rational(abs(coeff))]
    for t in sp.Mul.make_args(rest):
        base, e = t.as_base_exp()
        if (base.is_Rational and base > 0) or base == EPS_SYMBOL:
            terms.append(e * (log_rational(base) if base.is_Rational else sp.log(base)))
            continue
        s = constant_sign(t)
        if not s:
            return sp.log(c)
        sign *= s
        terms.append(sp.log(t if s > 0 else -t))
    if sign < 0:  # c is positive, so this cannot happen; keep log(c) whole rather than guess
        return sp.log(c)
    return expand(sp.Add(*terms))


# --------------------------------------------------------------------------- bounds


@lru_cache(maxsize=65536)
def bound(x) -> tuple[float, bool] | None:
    """(L, pos): x >= L >= 0 everywhere, and x > 0 everywhere if pos, derived only by rules that
    also make the gradient of x vanish wherever x = 0; None when x is not provably nonnegative so."""
    if is_constant(x):
        s = constant_sign(x)
        if s is None or s < 0:
            return None
        v = constant_value(x)
        return (0.0, s > 0) if v is None or s == 0 else (v * (1 - 1e-12), True)
    if x.is_Add:
        parts = [bound(t) for t in x.args]
        if any(p is None for p in parts):
            return None
        return sum(p[0] for p in parts), any(p[1] for p in parts)
    if x.is_Mul:  # nonnegative factors and an even number of strictly negative ones
        parts, negatives = [], 0
        for t in x.args:
            b = bound(t)
            if b is None:
                if not negative(t):
                    return None
                negatives += 1
                b = (0.0, True)
            parts.append(b)
        if negatives % 2:
            return None
        return (0.0 if negatives else math.prod(p[0] for p in parts)), all(p[1] for p in parts)
    if x.is_Pow:
        base, e = x.args
        b = bound(base)
        if not (e.is_Integer and e > 0):  # the base is positive (module invariant)
            return (b[0] ** float(e) if b is not None and e > 0 else 0.0), True
        if b is None:
            return (0.0, False) if e.is_even else None
        return b[0] ** int(e), b[1]
    func = x.func
    if func is psqrt:
        return math.sqrt(EPS) * (1 - 1e-12), True
    if func is pabs:
        return 0.0, False
    if func is ptanh:
        b = bound(x.args[0])
        return None if b is None else (math.tanh(b[0]), b[1])
    if func in (pmin, pmax):
        a, b = bound(x.args[0]), bound(x.args[1])
        known = [p for p in (a, b) if p is not None]
        if func is pmax and any(p[1] for p in known):  # >= a positive argument: never 0
            return max(p[0] for p in known), True
        if a is None or b is None:
            return None
        if func is pmin:
            return min(a[0], b[0]), a[1] and b[1]
        return max(a[0], b[0]), a[1] or b[1]
    return None  # y, f, plog, psign


@lru_cache(maxsize=65536)
def negative(x) -> bool:
    """x < 0 everywhere (so x is never 0)."""
    if is_constant(x):
        return constant_sign(x) == -1
    func = x.func
    if func is pmin:
        return negative(x.args[0]) or negative(x.args[1])
    if func is pmax:
        return negative(x.args[0]) and negative(x.args[1])
    if func is ptanh:
        return negative(x.args[0])
    if x.is_Add or x.is_Mul:
        return positive(expand(-x))
    return False


def nonneg(x) -> bool:
    return bound(x) is not None


def positive(x) -> bool:
    b = bound(x)
    return b is not None and b[1]


def at_least_eps(x) -> bool:
    b = bound(x)
    return b is not None and b[0] >= ABOVE_EPS


# --------------------------------------------------------------------------- factors


def split_factors(expr):
    """``expr`` as (c, [(base, exponent)]) with expr = c * prod(base**exponent), c rational.

    For a sum, the rational content and the powers common to every term are pulled out and the
    remaining sum is one more base, e.g. 2*f*y + 4*y -> (2, [(y, 1), (f + 2, 1)]).
    """
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
    factors = sorted(common.items(), key=lambda be: sort_key(be[0]))
    if rest != 1:
        factors.append((rest, sp.Integer(1)))
    return coeff, factors
