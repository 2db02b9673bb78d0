"""Sound canonical forms of loss expressions under the protected semantics (DESIGN §1.1, §1.5.1).

A canonical form is a SymPy polynomial, expanded, over the variables y and f and *atoms*: the
primitives that are not polynomial, as uninterpreted functions of their canonical arguments
(``plog``, ``psqrt``, ``pabs``, ``psign``, ``ptanh``, ``pmin``, ``pmax``), the positive powers
(1 + b^2)^(-1/2) of the analytic quotient, and exact constants. The clamp 1e-7 of the protected log
and sqrt is the positive symbol ``eps``, so plog(0) = log(eps) and psqrt(0) = sqrt(eps) stay exact.

Why this is sound, i.e. equal forms compute equal values *and* equal torch gradients: atoms are
uninterpreted, so SymPy applies no identity of the unprotected functions (no log|ab| = log|a| + log|b|,
no sqrt(x^2) = |x|); polynomial identities hold for values and for gradients, because torch's backward
obeys the sum and product rules whatever the gradient of each atom is, kinks included. Beyond the
ring, only the rules below are used; each was checked for values and for torch's gradient conventions
at kinks (sign' = 0, |a|' = sign(a), sign(0) = 0, a clamp passes the gradient where |a| >= eps, min and
max split it at a tie):

* nonneg(x) (see _bound) holds for sums and products of even powers, |.|, psqrt, positive constants,
  tanh of nonneg, min/max of two nonneg. Such an x also has gradient 0 wherever it is 0. Then
  |x| = x; min(a, b) = b when a - b is nonneg (at a tie a' = b'); sign(x) = 1 only if x is strictly
  positive (never for a bare |a|: sign(0) = 0).
* |c m| = |c| |m|, |a b| = |a| |b|, |a|^2k = a^2k, sign(ab) = sign(a) sign(b), sign(a)^3 = sign(a),
  sign(|a|) = sign(a)^2, sign(tanh a) = sign(a), |tanh a| = tanh|a|, tanh(-a) = -tanh(a).
* plog and psqrt depend on |a| only: their argument is the canonical |a|. If |a| >= eps provably,
  psqrt(a) = |a|^(1/2) and plog(a) = log|a|, split over positive factors whose logs are exact
  (log of psqrt(m) = plog(m)/2, since psqrt >= sqrt(eps) > eps). Nothing else is split.
* Constants fold exactly; plog/psqrt of a constant compare it with eps numerically (30 digits, with
  margins); a comparison that the margins cannot decide leaves an atom of the constant.

Every power with an exponent other than a positive integer has a positive base: the only sources are
aq's (1 + b^2)^(-1/2), psqrt of a provably positive argument, and positive constants.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache

import sympy as sp

from evomal.gp.expressions import Node
from evomal.gp.primitives import EPS

Y = sp.Symbol("y", real=True)
F = sp.Symbol("f", real=True)
EPS_SYMBOL = sp.Symbol("eps", positive=True)
_EPS_EXACT = sp.Rational(EPS)  # the float 1e-7, exactly
_VARIABLES = frozenset({Y, F})
_HALF = sp.Rational(1, 2)
_ABOVE_EPS = EPS * (1 + 1e-9)  # margins of the numeric comparisons with the clamp
_BELOW_EPS = EPS * (1 - 1e-9)
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


_ATOMS = (plog, psqrt, pabs, psign, ptanh, pmin, pmax)


def _expand(x):
    return sp.expand(x, deep=False, mul=True, multinomial=True, power_exp=False, power_base=False, log=False)


def _sort_key(x):
    return sp.default_sort_key(x)


@lru_cache(maxsize=65536)
def is_constant(x) -> bool:
    return not (x.free_symbols & _VARIABLES)


# --------------------------------------------------------------------------- constants


@lru_cache(maxsize=8192)
def _value(c) -> float | None:
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
    v = _value(c)
    if v is None or not math.isfinite(v) or abs(v) < _UNDECIDED:
        return None
    if abs(v) < 1e-6:  # small: make sure a cancellation did not leave rounding noise
        v2 = c.evalf(60, subs={EPS_SYMBOL: _EPS_EXACT})
        if not v2.is_Number or abs(v2) < _UNDECIDED or (v2 > 0) != (v > 0):
            return None
    return 1 if v > 0 else -1


def _normal(x):
    """(s, n) with x = s * n, s = +-1: n is the one of x, -x without a leading minus sign (SymPy's
    could_extract_minus_sign), else the smaller in SymPy's sort order; a function of the pair."""
    neg = -x
    minus_x, minus_neg = x.could_extract_minus_sign(), neg.could_extract_minus_sign()
    if minus_x != minus_neg:
        return (-1, neg) if minus_x else (1, x)
    return (-1, neg) if _sort_key(neg) < _sort_key(x) else (1, x)


def _log_rational(q):
    """log(q) of a positive rational as a sum over its prime factors, e.g. log(6) = log(2) + log(3)."""
    return sp.Add(*(e * sp.log(p) for p, e in sp.factorrat(q).items()))


def _log_constant(c):
    """log(c) of a positive constant, exact: split over the factors of c, each made positive (a log of
    a negative factor would be complex); rationals split over primes. Whole if a sign is undecided."""
    if c.is_Rational:
        return _log_rational(c)
    coeff, rest = c.as_coeff_Mul()
    sign = 1 if coeff > 0 else -1
    terms = [_log_rational(abs(coeff))]
    for t in sp.Mul.make_args(rest):
        base, e = t.as_base_exp()
        if (base.is_Rational and base > 0) or base == EPS_SYMBOL:
            terms.append(e * (_log_rational(base) if base.is_Rational else sp.log(base)))
            continue
        s = constant_sign(t)
        if not s:
            return sp.log(c)
        sign *= s
        terms.append(sp.log(t if s > 0 else -t))
    if sign < 0:  # c is positive, so this cannot happen; keep log(c) whole rather than guess
        return sp.log(c)
    return _expand(sp.Add(*terms))


# --------------------------------------------------------------------------- bounds


@lru_cache(maxsize=65536)
def _bound(x) -> tuple[float, bool] | None:
    """(L, pos): x >= L >= 0 everywhere, and x > 0 everywhere if pos, derived only by rules that
    also make the gradient of x vanish wherever x = 0; None when x is not provably nonnegative so."""
    if is_constant(x):
        s = constant_sign(x)
        if s is None or s < 0:
            return None
        v = _value(x)
        return (0.0, s > 0) if v is None or s == 0 else (v * (1 - 1e-12), True)
    if x.is_Add:
        parts = [_bound(t) for t in x.args]
        if any(p is None for p in parts):
            return None
        return sum(p[0] for p in parts), any(p[1] for p in parts)
    if x.is_Mul:  # nonnegative factors and an even number of strictly negative ones
        parts, negatives = [], 0
        for t in x.args:
            b = _bound(t)
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
        b = _bound(base)
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
        b = _bound(x.args[0])
        return None if b is None else (math.tanh(b[0]), b[1])
    if func in (pmin, pmax):
        a, b = _bound(x.args[0]), _bound(x.args[1])
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
        return positive(_expand(-x))
    return False


def nonneg(x) -> bool:
    return _bound(x) is not None


def positive(x) -> bool:
    b = _bound(x)
    return b is not None and b[1]


def _at_least_eps(x) -> bool:
    b = _bound(x)
    return b is not None and b[0] >= _ABOVE_EPS


# --------------------------------------------------------------------------- factors


def _factors(expr):
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
    factors = sorted(common.items(), key=lambda be: _sort_key(be[0]))
    if rest != 1:
        factors.append((rest, sp.Integer(1)))
    return coeff, factors


def _tidy(expr):
    """Per term: sign(a)^k -> sign(a) or sign(a)^2; |a|^2k -> a^2k; |a|^(2k+1) -> a^2k |a|; and
    sign(a)^2 dropped where the term also has a^k (k >= 2) or |a|^k: the term and its gradient are
    0 at a = 0 either way. Re-expanded, a few rounds (expanding a^2k may create new powers)."""
    for _ in range(4):
        terms = sp.Add.make_args(expr)
        tidied = [_tidy_term(t) for t in terms]
        if all(a is b for a, b in zip(tidied, terms)):
            break
        expr = _expand(sp.Add(*tidied))
    return expr


def _tidy_term(term):
    factors = sp.Mul.make_args(term)
    powers = dict(p.as_base_exp() for p in factors)
    out, changed = [], False
    for p in factors:
        base, e = p.as_base_exp()
        if e.is_Integer and e > 1 and base.func in (psign, pabs):
            k, inner = int(e), base.args[0]
            changed = True
            if base.func is pabs:
                p = inner ** (k - k % 2) * (base if k % 2 else 1)
            elif k % 2 == 0 and _vanishes_with(inner, powers):
                p = sp.Integer(1)
            elif k > 2:
                p = base ** (2 - k % 2)
            else:
                changed = False
        out.append(p)
    return sp.Mul(*out) if changed else term


def _vanishes_with(a, powers) -> bool:
    e = powers.get(a)
    return (e is not None and e.is_Integer and e >= 2) or pabs(a) in powers


# --------------------------------------------------------------------------- rules


def abs_form(x):
    if is_constant(x):
        s = constant_sign(x)
        return pabs(_normal(x)[1]) if s is None else s * x
    coeff, factors = _factors(x)
    return _tidy(_expand(sp.Mul(abs(coeff), *(_abs_power(b, e) for b, e in factors))))


def _abs_power(base, e):
    if is_constant(base):
        return abs_form(base) ** e
    if not (e.is_Integer and e > 0) or e.is_even or nonneg(base):
        return base**e  # (other than a positive integer power: the base is positive)
    if negative(base):
        return (-base) ** e
    if base.func is psign:
        return base**2
    if base.func is ptanh:
        return tanh_form(abs_form(base.args[0])) ** e
    return pabs(_normal(base)[1]) ** e


def sign_form(x):
    if is_constant(x):
        s = constant_sign(x)
        if s is None:
            s, n = _normal(x)
            return s * psign(n)
        return sp.Integer(s)
    coeff, factors = _factors(x)
    return _tidy(_expand(sp.Mul(sp.sign(coeff), *(_sign_power(b, e) for b, e in factors))))


def _sign_power(base, e):
    if positive(base) or not (e.is_Integer and e > 0):
        return sp.Integer(1)  # a power other than a positive integer has a positive base
    if is_constant(base):
        return sign_form(base) ** e
    if negative(base):
        return sp.Integer(-1) ** e
    if e.is_even:
        return sign_form(base) ** 2
    func = base.func
    if func is psign:
        return base**e
    if func is ptanh:
        return sign_form(base.args[0]) ** e
    if func is pabs:
        return sign_form(base.args[0]) ** 2
    s, n = _normal(base)
    return (s * psign(n)) ** e


def tanh_form(x):
    if is_constant(x):
        return sp.tanh(x)
    if nonneg(x):
        return ptanh(x)
    neg = -x
    if nonneg(neg):
        return -ptanh(neg)
    s, n = _normal(x)
    return s * ptanh(n)


def plog_form(x):
    a = abs_form(x)
    if is_constant(a):
        s = constant_sign(a)
        if s == 0:
            return sp.log(EPS_SYMBOL)
        v = _value(a) if s is not None else None
        if v is not None and v >= _ABOVE_EPS:
            return _log_constant(a)
        if v is not None and v <= _BELOW_EPS:
            return sp.log(EPS_SYMBOL)
        return plog(a)
    if _is_clamped_square(a):  # psqrt(m)^2 = max(|m|, eps)
        return plog_form(a.base.args[0])
    if _at_least_eps(a):
        split = _log_of_positive(a)
        if split is not None:
            return split
    return plog(a)


def _is_clamped_square(a) -> bool:
    """a = psqrt(m)^2 = max(|m|, eps): then plog(a) = plog(m) and psqrt(a) = psqrt(m), values and
    gradients (where |m| < eps both are constant; elsewhere a = |m|)."""
    return a.is_Pow and a.exp == 2 and a.base.func is psqrt


def _log_of_positive(a):
    """log(a) for a >= eps, if every factor has an exact protected log; else None."""
    terms = []
    for factor in sp.Mul.make_args(a):
        base, e = factor.as_base_exp()
        if is_constant(factor):
            terms.append(_log_constant(factor))
        elif base.func is psqrt:
            terms.append(e * plog(base.args[0]) / 2)
        elif base.is_Add and _at_least_eps(base):
            terms.append(e * plog(base))
        else:
            return None
    return _expand(sp.Add(*terms))


def psqrt_form(x):
    a = abs_form(x)
    if is_constant(a):
        s = constant_sign(a)
        if s == 0:
            return sp.sqrt(EPS_SYMBOL)
        v = _value(a) if s is not None else None
        if v is not None and v >= _ABOVE_EPS:
            return sp.sqrt(a)
        if v is not None and v <= _BELOW_EPS:
            return sp.sqrt(EPS_SYMBOL)
        return psqrt(a)
    if _is_clamped_square(a):
        return psqrt_form(a.base.args[0])
    if _at_least_eps(a):
        return _tidy(_expand(a**_HALF))
    return psqrt(a)


def lattice_form(op: str, a, b):
    if a == b:
        return a
    d = _expand(a - b)
    if nonneg(d):  # a >= b
        return b if op == "min" else a
    if nonneg(-d):
        return a if op == "min" else b
    lo, hi = sorted((a, b), key=_sort_key)
    return (pmin if op == "min" else pmax)(lo, hi)


def aq_form(a, b):
    q = (1 + _tidy(_expand(b**2))) ** -_HALF
    return _tidy(_expand(a * q))


_UNARY = {"abs": abs_form, "sign": sign_form, "tanh": tanh_form, "log": plog_form, "sqrt": psqrt_form}


def combine(op: str, args: list):
    """Canonical form of ``op`` applied to canonical forms ``args``."""
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "mul":
        return _tidy(_expand(args[0] * args[1]))
    if op == "square":
        return _tidy(_expand(args[0] ** 2))
    if op == "aq":
        return aq_form(*args)
    if op in ("min", "max"):
        return lattice_form(op, *args)
    return _UNARY[op](args[0])


# --------------------------------------------------------------------------- trees


class _Memo:
    """Canonical forms of subtrees by text; a pure function of the text, so the memo never changes
    a key, only how fast it comes."""

    def __init__(self, size: int = 50000) -> None:
        self.size = size
        self.forms: OrderedDict[str, object] = OrderedDict()

    def get(self, text: str):
        form = self.forms.get(text)
        if form is not None:
            self.forms.move_to_end(text)
        return form

    def put(self, text: str, form) -> None:
        self.forms[text] = form
        if len(self.forms) > self.size:
            self.forms.popitem(last=False)


_MEMO = _Memo()
_LEAVES = {"y": Y, "f": F, "1": sp.Integer(1), "-1": sp.Integer(-1)}
_ALLOWED_CONSTANT_FUNCS = (sp.log, sp.tanh)


def canonical_form(tree: Node):
    """Canonical SymPy form of ``tree``; raises Unsupported when a rule cannot be represented."""

    def walk(node: Node):
        if node.is_terminal:
            return node.op, _LEAVES[node.op]
        parts = [walk(c) for c in node.children]
        text = f"{node.op}({', '.join(t for t, _ in parts)})"
        form = _MEMO.get(text)
        if form is None:
            form = combine(node.op, [x for _, x in parts])
            _MEMO.put(text, form)
        return text, form

    form = walk(tree)[1]
    _check(form)
    return form


def _check(form) -> None:
    """Only the vocabulary of this module may appear (a guard against a SymPy rewrite slipping in:
    I, pi, zoo, nan, floats, Abs, ... make the key structural)."""
    for node in sp.preorder_traversal(form):
        if node.is_Atom:
            if node in (Y, F, EPS_SYMBOL) or node.is_Rational:
                continue
            raise Unsupported(f"atom {node} in {form}")
        if node.is_Add or node.is_Mul or node.is_Pow or node.func in _ATOMS:
            continue
        if node.func in _ALLOWED_CONSTANT_FUNCS and is_constant(node):
            continue
        raise Unsupported(f"{node.func} in {form}")
