"""Learning-rate sensitivity: the meta-test repeated at several initial learning rates.

The paper reads part of a learned loss's gain as implicit learning-rate tuning (a loss scaled by c acts
like SGD with c times the learning rate). Meta-testing the learned loss and the baseline over a grid of
initial learning rates, with everything else as in the meta-test, shows whether the gain survives a
tuned baseline learning rate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from torch import nn

from evomal.learning.meta_testing import meta_test


@dataclass(frozen=True)
class SweepRun:
    """One method trained from one seed at one initial learning rate; ``test_metric`` inf when it diverged."""

    lr: float
    method: str
    seed: int
    test_metric: float
    diverged: bool
    reason: str | None


def lr_sweep(losses: Mapping[str, Callable], task, build: Callable[[int], nn.Module], *, lrs: Sequence[float],
             seeds: Iterable[int], steps: int, momentum: float = 0.0, nesterov: bool = False,
             weight_decay: float = 0.0, batch_size: int = 128, milestones: Iterable[int] = (),
             gamma: float = 0.1) -> list[SweepRun]:
    """``meta_test`` at every learning rate of ``lrs`` (in that order); only the learning rate varies.

    At each learning rate every method trains ``build(seed)`` with the same seed, initialisation and
    batch order, so the comparison is paired per (lr, seed). ``lr`` 0 is allowed: the networks stay
    at their initialisation.
    """
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(lr < 0 for lr in lrs):
        raise ValueError(f"learning rates must be a non-empty list of numbers >= 0, got {lrs}")
    seeds = list(seeds)
    milestones = tuple(milestones)
    runs = []
    for lr in lrs:
        # no intermediate evaluations: only the final test metric is reported
        for r in meta_test(losses, task, build, seeds=seeds, steps=steps, lr=lr, momentum=momentum,
                           nesterov=nesterov, weight_decay=weight_decay, batch_size=batch_size,
                           milestones=milestones, gamma=gamma, eval_every=None):
            runs.append(SweepRun(lr, r.method, r.seed, float(r.test_metric), bool(r.diverged), r.reason))
    return runs
