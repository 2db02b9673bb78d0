"""Meta-testing (DESIGN §1.7): every loss trains a fresh network per seed, scored on the test split.

All the runs (loss x seed) can train as stacked groups (``batched``, evomal.learning.batched): each
member starts from its seed's network and draws its seed's batches, so the results equal the one-by-one
runs up to the rounding of batched matrix products.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

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


def train_runs(runs: Sequence[tuple[int, Callable]], task, build: Callable[[int], nn.Module], *,
               batched: bool = False, **train_kw) -> Iterator[tuple[TrainResult, nn.Module]]:
    """Each ``(seed, loss)`` trains ``build(seed)`` with ``seed``'s batches: (result, trained network), in
    order, each as soon as it is done.

    ``batched`` trains them as stacked groups (evomal.learning.batched, at most MAX_GROUP runs each, cut
    in order); a result's ``seconds`` is then its share of its group's."""
    if not batched:
        for seed, loss in runs:
            t0 = time.perf_counter()
            model = build(seed)
            r = train(model, loss, task, seed=seed, **train_kw)
            r.seconds = time.perf_counter() - t0
            yield r, model
        return
    from evomal.learning.batched import groups, train_group

    for group in groups(list(runs)):
        starts = {seed: {n: p.detach() for n, p in build(seed).named_parameters()} for seed, _ in group}
        members = train_group(build(group[0][0]), [starts[seed] for seed, _ in group], [loss for _, loss in group],
                              task, seed=[seed for seed, _ in group], **train_kw)
        for (seed, _), member in zip(group, members):
            net = build(seed)
            net.load_state_dict(member.params)
            yield member.result, net


def meta_test(losses: Mapping[str, Callable], task, build: Callable[[int], nn.Module], *, seeds: Iterable[int],
              steps: int, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
              batch_size: int = 128, milestones: Iterable[int] = (), gamma: float = 0.1,
              eval_every: int | None = None, batched: bool = False,
              on_result: Callable[[MetaTestResult], None] | None = None) -> list[MetaTestResult]:
    """DESIGN §1.7: every method trains ``build(seed)`` with the same seed, settings and batch order.

    ``on_result`` is called with each result as soon as its run ends (its group's, when batched).
    """
    results = []
    kw = dict(steps=steps, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
              batch_size=batch_size, milestones=tuple(milestones), gamma=gamma, eval_every=eval_every)
    x_test, y_test = _split(task, "test")
    order = [(seed, method) for seed in seeds for method in losses]
    runs = train_runs([(seed, losses[method]) for seed, method in order], task, build, batched=batched, **kw)
    for (seed, method), (r, model) in zip(order, runs):
        t0 = time.perf_counter()
        test = math.inf if r.reason is not None else metric(model, x_test, y_test, task.kind)
        results.append(MetaTestResult(method, seed, test, r.curve, r.seconds + time.perf_counter() - t0,
                                      r.diverged, r.reason))
        if on_result is not None:
            on_result(results[-1])
    return results
