"""Re-scoring the finalists of a search from scratch on validation (DESIGN §1.6a).

The search's fitness is one seed and one short training, so its winner is partly luck. The finalists
(the best few distinct losses and the baseline) each train fresh networks with the meta-test budget on
the training split, over validation seeds disjoint from the meta-test seeds, and are scored on the
validation split. The test split is never read here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from torch import nn

from evomal.learning.meta_testing import train_runs


@dataclass(frozen=True)
class ValidationScore:
    """One finalist trained from one seed; ``metric`` is the validation metric after the last step."""

    name: str
    seed: int
    metric: float
    reason: str | None


def score_on_validation(losses: Mapping[str, Callable], task, build: Callable[[int], nn.Module], *,
                        seeds: Iterable[int], steps: int, lr: float, momentum: float = 0.0,
                        nesterov: bool = False, weight_decay: float = 0.0, batch_size: int = 128,
                        milestones: Iterable[int] = (), gamma: float = 0.1,
                        batched: bool = False) -> list[ValidationScore]:
    """Every loss trains ``build(seed)`` with the same seed, settings and batch order as the others
    (as stacked groups when ``batched``, evomal.learning.batched)."""
    scores = []
    milestones = tuple(m for m in milestones if m < steps)
    order = [(int(seed), name) for seed in seeds for name in losses]
    runs = train_runs([(seed, losses[name]) for seed, name in order], task, build, batched=batched, steps=steps,
                      lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, batch_size=batch_size,
                      milestones=milestones, gamma=gamma, eval_every=None)
    for (seed, name), (r, _) in zip(order, runs):
        # training scores the validation split after its last step
        value = math.inf if r.reason is not None else float(r.curve[-1][2])
        scores.append(ValidationScore(name, seed, value, r.reason))
    return scores
