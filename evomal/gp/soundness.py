"""Numerical check of the symbolic-equivalence keys (DESIGN §1.5.1): do key-equal losses compute alike?

Used by tests/test_canonical_soundness.py and bench/bench_filters.py. Expressions come from the
project's own GP (:func:`sample_expressions`: init_population and breed, as the pipeline runs them).
Two expressions agree when their values and their gradients with respect to f agree at every point of
:func:`check_points` (one-hot targets with softmax predictions, and regression values including exact
zeros, ties y = f and y = -f, values below the clamp 1e-7, +-1, small and large).

Two stages, so that rounding is never mistaken for unsoundness: float64 torch autograd through the
protected primitives of evomal.gp.primitives (the semantics the pipeline trains with) compares all
points; a point where the two disagree beyond relative 1e-9 is re-evaluated in exact-real arithmetic
(forward-mode derivatives with torch's conventions at kinks: sign' = 0, |a|' = sign(a), the clamp of
log/sqrt passes the gradient where |a| >= 1e-7, min/max split it at a tie): mpmath at 80 digits, and
where that disagrees too, SymPy with exact rationals, which also decides exactly whether a point lies
on a kink (a tie of two irrational values, sqrt(eps)^2 against eps). Only a disagreement that survives
exact arithmetic counts: e.g. ((y + f) - f) - y is 0 in exact arithmetic but not always in float64,
and the key that maps it to 0 is sound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from evomal.gp.expressions import parse
from evomal.gp.numeric import (
    RTOL,
    evaluate_float,
    exact_disagree,
    float_close,
    program_of_key,
    program_of_tree,
)
from evomal.gp.primitives import EPS


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
    suspect = ~(float_close(v1, v2) & float_close(g1, g2))
    out = []
    for i in suspect.nonzero().flatten().tolist():
        values = exact_disagree(p1, p2, ys[i], fs[i])
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
