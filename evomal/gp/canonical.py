"""Canonical keys for the symbolic-equivalence filter (DESIGN §1.5.1).

Two expressions get the same key only if they compute the same loss: the same values for all y and
f, and the same gradient with respect to f, under the *protected* semantics of DESIGN §1.1 (sign(0) =
0; log = log(max(|a|, 1e-7)) and sqrt = sqrt(max(|a|, 1e-7)) at every node), zeros included. A missed
merge costs one evaluation; a false merge loses a loss that the search never trains, so every
rewrite is exact under those semantics (evomal.gp.algebra and evomal.gp.rules say why)
and anything else falls back to a structural key. tests/test_canonical_soundness.py checks the keys
numerically on thousands of expressions from the project's own initialiser and breeding.

What is compared is the *unweighted* expression (every edge weight 1, DESIGN §1.3): after local
search the weights make e.g. ``sub(y, f)`` and ``add(y, mul(-1, f))`` different parametrised
families, but the GP archive treats them as one loss, as the reference's string archive would for
identical strings.

Cost is bounded deterministically: before any SymPy work an estimate of the size of the expanded
forms (see _expansion_work) is compared with ``budget``; over budget, the key is structural. No
wall-clock limit is used, so a key never depends on machine load. Keys are stable across processes
and hash seeds for one SymPy version; another SymPy version may print some keys differently.
Canonical forms of subtrees are memoised by their text (a pure function of it), which is what
makes a bred generation, full of shared subtrees, cheap.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import Iterator

from evomal.gp.expressions import Node, parse

#: Default cost budget in units of _expansion_work (about 10-20 us of SymPy time each).
DEFAULT_BUDGET = 20000

_SYMPY_LOCK = threading.Lock()

_COMMUTATIVE = frozenset({"add", "mul", "min", "max"})


@dataclass(frozen=True)
class CanonicalKey:
    key: str  # equal keys => same loss (values and gradients); different keys may still be one loss
    method: str  # "sympy" | "structural" (fallback when over budget or no exact rule applies)


def canonical_key(expression: str | Node, *, budget: int = DEFAULT_BUDGET) -> CanonicalKey:
    """Key of ``expression``; keys of the two methods carry different prefixes and never collide."""
    text = str(expression) if isinstance(expression, Node) else str(parse(expression))
    return _cached_key(text, int(budget))


@functools.lru_cache(maxsize=8192)
def _cached_key(text: str, budget: int) -> CanonicalKey:
    tree = parse(text)
    if _expansion_work(tree) <= budget:
        from evomal.gp.algebra import Unsupported

        try:
            return CanonicalKey("sympy:" + _sympy_key(tree), "sympy")
        except Unsupported:
            pass
    return CanonicalKey("tree:" + structural_key(tree), "structural")


# --------------------------------------------------------------------------- budget


def expansion_work(tree: Node) -> int:
    """The deterministic cost of canonicalising ``tree`` that the budget bounds (see _expansion_work)."""
    return _expansion_work(tree)


def _expansion_work(tree: Node) -> int:
    """Estimated size of the expressions SymPy builds while canonicalising ``tree``.

    Bottom-up, each node's canonical (expanded) form is estimated as (terms, size), size counting
    symbols and operations over all terms. Products distribute: t1 * t2 terms whose sizes add up to
    t2 * s1 + t1 * s2. aq multiplies every term of its numerator by the atom (1 + b^2)^(-1/2), whose
    own expansion is carried along; that repetition is what explodes for nested aq. Functions turn
    their argument into one atom (min and max also expand the difference of their arguments). The
    work is the sum of the estimated sizes over all nodes; it tracks the measured time within a
    small factor, and overestimates repeated squares, whose terms merge.
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
        elif op in ("min", "max"):
            (t1, s1), (t2, s2) = args
            work += s1 + s2  # the difference a - b, expanded to compare the arguments
            out = (1, s1 + s2 + 1)
        else:  # abs, sign, log, sqrt, tanh: one atom (or a product of atoms) of the argument
            (t, s), = args
            out = (1, s + 1)
        work += out[1]
        return out

    estimate(tree)
    return work


# --------------------------------------------------------------------------- SymPy canonical form


@contextlib.contextmanager
def _seeded_sympy_assumptions() -> Iterator[None]:
    """Seed SymPy's private RNG that shuffles the order of assumption deductions; restore it after.

    Deductions should not depend on that order, but SymPy shuffles precisely because it is not
    guaranteed, and keys must be equal across processes. A lock keeps threads from interleaving
    (and guards the memo of subtree forms).
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


def _sympy_key(tree: Node) -> str:
    import sympy as sp

    from evomal.gp.rules import canonical_form

    with _seeded_sympy_assumptions():
        form = canonical_form(tree)
        # str() orders terms by SymPy's deterministic sort key, independent of hash seeds.
        return sp.sstr(form, order="lex")


# --------------------------------------------------------------------------- structural fallback


def structural_key(tree: Node) -> str:
    """Text form with commutative arguments sorted and trivial exact folds applied.

    Folds: mul by 1 vanishes; min/max of identical arguments is that argument; sign, abs, square
    of a constant and abs(abs(a)) reduce. Each holds for values and gradients, at 0 too. Sorting is
    by the children's own keys, so it is canonical.
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
