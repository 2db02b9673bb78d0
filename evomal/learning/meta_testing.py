"""Meta-testing (DESIGN §1.7): every loss trains a fresh network per seed, scored on the test split.

The losses of one seed share the initial network and the batch order, so they can train as one
stacked group (``batched``, evomal.learning.batched); the results equal the one-by-one runs up to the
rounding of batched matrix products.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from torch import nn

from evomal.learning.training import TrainResult, _split, metric, train


@dataclass
class MetaTestResult:
    """One method trained from one seed; ``test_metric`` is inf when training diverged."""

    method: str
    seed: int
    test_metric: float
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    diverged: bool = False
    reason: str | None = None


def train_each(losses: Mapping[str, Callable], task, build: Callable[[int], nn.Module], *, seed: int,
               batched: bool = False, **train_kw) -> dict[str, tuple[TrainResult, nn.Module]]:
    """Each loss trains ``build(seed)`` with ``seed``'s batches: name -> (result, trained network).

    ``batched`` trains them as one group; every result's ``seconds`` is then its share of the group's."""
    if not batched:
        out = {}
        for name, loss in losses.items():
            t0 = time.perf_counter()
            model = build(seed)
            r = train(model, loss, task, seed=seed, **train_kw)
            r.seconds = time.perf_counter() - t0
            out[name] = (r, model)
        return out
    from evomal.learning.batched import train_group

    model = build(seed)
    init = {n: p.detach() for n, p in model.named_parameters()}
    members = train_group(model, [init] * len(losses), list(losses.values()), task, seed=seed, **train_kw)
    out = {}
    for name, member in zip(losses, members):
        net = build(seed)
        net.load_state_dict(member.params)
        out[name] = (member.result, net)
    return out


def meta_test(losses: Mapping[str, Callable], task, build: Callable[[int], nn.Module], *, seeds: Iterable[int],
              steps: int, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
              batch_size: int = 128, milestones: Iterable[int] = (), gamma: float = 0.1,
              eval_every: int | None = None, batched: bool = False,
              on_result: Callable[[MetaTestResult], None] | None = None) -> list[MetaTestResult]:
    """DESIGN §1.7: every method trains ``build(seed)`` with the same seed, settings and batch order.

    ``on_result`` is called with each result as soon as its run ends (its seed's group, when batched).
    """
    results = []
    kw = dict(steps=steps, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
              batch_size=batch_size, milestones=tuple(milestones), gamma=gamma, eval_every=eval_every)
    x_test, y_test = _split(task, "test")
    for seed in seeds:
        for method, (r, model) in train_each(losses, task, build, seed=seed, batched=batched, **kw).items():
            t0 = time.perf_counter()
            test = math.inf if r.reason is not None else metric(model, x_test, y_test, task.kind)
            results.append(MetaTestResult(method, seed, test, r.curve, r.seconds + time.perf_counter() - t0,
                                          r.diverged, r.reason))
            if on_result is not None:
                on_result(results[-1])
    return results
