"""The rewrite rules of the canonical forms (evomal.gp.algebra), one per primitive, and the walk
over a tree that applies them bottom-up with a memo of subtree forms.

Only these rules are used beyond the polynomial ring; each was checked for values and for torch's
gradient conventions at kinks (sign' = 0, |a|' = sign(a), sign(0) = 0, a clamp passes the gradient
where |a| >= eps, min and max split it at a tie), and tests/test_canonical_soundness.py checks them
numerically:

* nonneg(x) (see algebra.bound) holds for sums and products of even powers, |.|, psqrt, positive constants,
  tanh of nonneg, min/max of two nonneg, products with an even number of strictly negative factors
  (negative(): negative constants, min with a negative argument, ...), and max with a strictly
  positive argument. Such an x has gradient 0 wherever it is 0. Then |x| = x; min(a, b) = b when
  a - b is nonneg (at a tie a' = b'); sign(x) = 1 only if x is strictly positive (never for a bare
  |a|: sign(0) = 0); |x| = -x and sign(x) = -1 if x is strictly negative.
* |c m| = |c| |m|, |a b| = |a| |b|, |a|^2k = a^2k, sign(ab) = sign(a) sign(b), sign(a)^3 = sign(a),
  sign(|a|) = sign(a)^2, sign(tanh a) = sign(a), |tanh a| = tanh|a|, tanh(-a) = -tanh(a),
  tanh(a)^2k = tanh(|a|)^2k, and sign(a)^2 g = g for a term g with a factor a^k (k >= 2) or |a|^k
  (g and its gradient vanish at a = 0). Not sign(a) |a| = a: its gradient is sign(a)^2 a'.
* plog and psqrt depend on |a| only: their argument is the canonical |a|. If |a| >= eps provably,
  psqrt(a) = |a|^(1/2) and plog(a) = log|a|, split over positive factors whose logs are exact
  (log of psqrt(m) = plog(m)/2, since psqrt >= sqrt(eps) > eps). psqrt(m)^2 = max(|m|, eps), so its
  plog and psqrt are those of m. Nothing else is split.
* Constants fold exactly; plog/psqrt of a constant compare it with eps numerically (30 digits, with
  margins); a comparison that the margins cannot decide leaves an atom of the constant.
"""
from __future__ import annotations

from collections import OrderedDict

import sympy as sp

from evomal.gp.algebra import (
    ABOVE_EPS,
    ATOMS,
    BELOW_EPS,
    EPS_SYMBOL,
    F,
    HALF,
    Unsupported,
    Y,
    at_least_eps,
    constant_sign,
    constant_value,
    expand,
    is_constant,
    log_constant,
    negative,
    nonneg,
    pabs,
    plog,
    pmax,
    pmin,
    positive,
    psign,
    psqrt,
    ptanh,
    sign_normal,
    sort_key,
    split_factors,
)
from evomal.gp.expressions import Node


def _tidy(expr):
    """Per term: sign(a)^k -> sign(a) or sign(a)^2; |a|^2k -> a^2k; |a|^(2k+1) -> a^2k |a|;
    tanh(a)^2k -> tanh(|a|)^2k; sign(a)^2 dropped where the term also has a^k (k >= 2) or |a|^k
    (the term and its gradient are 0 at a = 0 either way). Re-expanded, a few rounds (expanding
    a^2k may create new powers)."""
    for _ in range(4):
        terms = sp.Add.make_args(expr)
        tidied = [_tidy_term(t) for t in terms]
        if all(a is b for a, b in zip(tidied, terms)):
            break
        expr = expand(sp.Add(*tidied))
    return expr


def _tidy_term(term):
    factors = sp.Mul.make_args(term)
    powers = dict(p.as_base_exp() for p in factors)
    out, changed = [], False
    for p in factors:
        base, e = p.as_base_exp()
        if e.is_Integer and e.is_even and base.func is ptanh and not nonneg(base.args[0]):
            p = tanh_form(abs_form(base.args[0])) ** e  # tanh(a)^2k = tanh(|a|)^2k
            changed = True
        elif e.is_Integer and e > 1 and base.func in (psign, pabs):
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
        return pabs(sign_normal(x)[1]) if s is None else s * x
    coeff, factors = split_factors(x)
    return _tidy(expand(sp.Mul(abs(coeff), *(_abs_power(b, e) for b, e in factors))))


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
    return pabs(sign_normal(base)[1]) ** e


def sign_form(x):
    if is_constant(x):
        s = constant_sign(x)
        if s is None:
            s, n = sign_normal(x)
            return s * psign(n)
        return sp.Integer(s)
    coeff, factors = split_factors(x)
    return _tidy(expand(sp.Mul(sp.sign(coeff), *(_sign_power(b, e) for b, e in factors))))


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
    s, n = sign_normal(base)
    return (s * psign(n)) ** e


def tanh_form(x):
    if is_constant(x):
        return sp.tanh(x)
    if nonneg(x):
        return ptanh(x)
    neg = -x
    if nonneg(neg):
        return -ptanh(neg)
    s, n = sign_normal(x)
    return s * ptanh(n)


def plog_form(x):
    a = abs_form(x)
    if is_constant(a):
        s = constant_sign(a)
        if s == 0:
            return sp.log(EPS_SYMBOL)
        v = constant_value(a) if s is not None else None
        if v is not None and v >= ABOVE_EPS:
            return log_constant(a)
        if v is not None and v <= BELOW_EPS:
            return sp.log(EPS_SYMBOL)
        return plog(a)
    if _is_clamped_square(a):  # psqrt(m)^2 = max(|m|, eps)
        return plog_form(a.base.args[0])
    if at_least_eps(a):
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
            terms.append(log_constant(factor))
        elif base.func is psqrt:
            terms.append(e * plog(base.args[0]) / 2)
        elif base.is_Add and at_least_eps(base):
            terms.append(e * plog(base))
        else:
            return None
    return expand(sp.Add(*terms))


def psqrt_form(x):
    a = abs_form(x)
    if is_constant(a):
        s = constant_sign(a)
        if s == 0:
            return sp.sqrt(EPS_SYMBOL)
        v = constant_value(a) if s is not None else None
        if v is not None and v >= ABOVE_EPS:
            return sp.sqrt(a)
        if v is not None and v <= BELOW_EPS:
            return sp.sqrt(EPS_SYMBOL)
        return psqrt(a)
    if _is_clamped_square(a):
        return psqrt_form(a.base.args[0])
    if at_least_eps(a):
        return _tidy(expand(a**HALF))
    return psqrt(a)


def lattice_form(op: str, a, b):
    if a == b:
        return a
    d = expand(a - b)
    if nonneg(d):  # a >= b
        return b if op == "min" else a
    if nonneg(-d):
        return a if op == "min" else b
    lo, hi = sorted((a, b), key=sort_key)
    return (pmin if op == "min" else pmax)(lo, hi)


def aq_form(a, b):
    q = (1 + _tidy(expand(b**2))) ** -HALF
    return _tidy(expand(a * q))


_UNARY = {"abs": abs_form, "sign": sign_form, "tanh": tanh_form, "log": plog_form, "sqrt": psqrt_form}


def combine(op: str, args: list):
    """Canonical form of ``op`` applied to canonical forms ``args``."""
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "mul":
        return _tidy(expand(args[0] * args[1]))
    if op == "square":
        return _tidy(expand(args[0] ** 2))
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
        if node.is_Add or node.is_Mul or node.is_Pow or node.func in ATOMS:
            continue
        if node.func in _ALLOWED_CONSTANT_FUNCS and is_constant(node):
            continue
        raise Unsupported(f"{node.func} in {form}")
