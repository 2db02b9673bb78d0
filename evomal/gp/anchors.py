"""Baseline-anchored search (DESIGN §1.6a): generation 0 seeded with the task's baseline loss written as
an expression, and a few well-known forms, so that with elitism the search can only improve on them.

No published implementation offers this; it is off in the presets that reproduce the paper.
"""
from __future__ import annotations

from evomal.gp.expressions import parse
from evomal.gp.operators import Individual

#: Known losses as expressions, per task kind; the first one is the baseline itself.
ANCHORS = {
    "classification": (
        "mul(-1, mul(y, log(f)))",                          # cross-entropy
        "mul(-1, mul(add(y, 1), log(f)))",                  # cross-entropy + a uniform-target term (label-smoothing shaped)
        "mul(-1, mul(mul(y, square(sub(1, f))), log(f)))",  # focal loss, gamma 2
        "square(sub(y, f))",                                # Brier score
    ),
    "regression": (
        "square(sub(f, y))",                                # squared error
        "abs(sub(f, y))",                                   # absolute error
        "sqrt(add(1, square(sub(f, y))))",                  # pseudo-Huber
    ),
}


def anchor_expressions(kind: str, forms=None) -> list[str]:
    """The expressions to anchor with: ``forms`` if given (checked), else the catalogue for ``kind``."""
    if kind not in ANCHORS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {tuple(ANCHORS)}")
    chosen = list(ANCHORS[kind] if not forms else forms)
    for text in chosen:
        missing = {"y", "f"} - parse(text).variables()
        if missing:
            raise ValueError(f"anchor expression {text!r} lacks {' and '.join(sorted(missing))}")
    return [str(parse(text)) for text in chosen]


def anchor_population(population: list[Individual], expressions: list[str]) -> list[Individual]:
    """Generation 0 with its first individuals replaced by the anchors (ids and size unchanged)."""
    if len(expressions) > len(population):
        raise ValueError(f"{len(expressions)} anchor expressions do not fit a population of {len(population)}")
    anchored = [Individual(ind.id, text, (), "anchor") for ind, text in zip(population, expressions)]
    return anchored + population[len(expressions):]
