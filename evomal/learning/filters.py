"""Cheap filters that run before any expensive work on a candidate loss (DESIGN §1.5, items 2 and 3).

* :func:`rejection_test` - does minimising the candidate loss directly over a few predictions improve
  the task metric (error rate / MSE, as the reference decides; or, as an option, the task loss) at all?
  If not, the loss cannot train a network and is rejected (fitness +inf).
* :func:`gradient_signature` / :func:`signatures_match` - two losses whose per-sample gradient norms
  agree at fixed inputs drive training the same way, so the archived fitness can be reused.

Both use the loss with all edge weights 1 (the expression as the GP proposed it), in float64 so that
rounding noise cannot pass for a signal, and are deterministic for a seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from evomal.losses.codegen import compile_frozen
from evomal.losses.modules import FrozenLoss, baseline_loss, prepare
from evomal.learning.devices import derive_seed, make_generator
from evomal.learning.training import metric
from evomal.gp.expressions import Node

#: Improvements of the mean measure at or below this are rounding noise, not learning.
MIN_IMPROVEMENT = 1e-6

#: What the rejection protocol compares before and after: ``metric`` (DESIGN §1.5, the reference) or
#: ``task_loss`` (cross-entropy / MSE; accepts losses that lower CE while the error rate rises).
REJECTION_MEASURES = ("metric", "task_loss")


@dataclass
class RejectionResult:
    accepted: bool
    improvement: float
    reason: str
    before: float = math.nan
    after: float = math.nan
    measure: str = "metric"


def _measure(measure: str, kind: str) -> tuple[str, Callable[[Tensor, Tensor], float]]:
    """(readable name, function of (predictions, target)) of a rejection measure."""
    if measure == "task_loss":
        loss = baseline_loss(kind)
        return ("cross-entropy" if kind == "classification" else "MSE"), lambda p, t: float(loss(p, t))
    if measure == "metric":
        # the fitness metric itself, applied to the predictions (an identity network)
        return (("error rate" if kind == "classification" else "MSE"),
                lambda p, t: metric(nn.Identity(), p, t, kind))
    raise ValueError(f"unknown rejection measure {measure!r}; known: {', '.join(REJECTION_MEASURES)}")


def _default_reinit() -> Callable[[nn.Module, int], None]:
    from evomal.tasks.models import reinitialize

    return reinitialize


@torch.no_grad()
def _untrained_predictions(model: nn.Module, x: Tensor) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was_training)


def rejection_test(tree: Node, task, model: nn.Module, *, samples: int = 100, steps: int = 100, lr: float,
                   seed: int, min_improvement: float = MIN_IMPROVEMENT,
                   reinit: Callable[[nn.Module, int], None] | None = None,
                   measure: str = "metric") -> RejectionResult:
    """DESIGN §1.5 (2): optimise the predictions of an untrained network directly under the candidate.

    ``samples`` training samples (seeded) get the predictions of ``model`` re-initialised from
    ``seed``; Adam at ``lr`` minimises the candidate loss over those predictions for ``steps`` steps.
    improvement = ``measure`` over the samples before minus after: the task metric (error rate / MSE,
    ``"metric"``) or the task loss (CE / MSE, ``"task_loss"``); the loss is accepted only if it is
    finite and above ``min_improvement``. The reason names the measure and its numbers.
    """
    name, measure_of = _measure(measure, task.kind)  # an unknown measure fails before any work
    kind = task.kind
    x, y = task.x_train, task.y_train
    gen = make_generator(derive_seed(seed, "rejection-samples"), x.device)
    idx = torch.randperm(x.shape[0], generator=gen, device=x.device)[:samples]
    (reinit or _default_reinit())(model, seed)
    preds = _untrained_predictions(model, x[idx]).double()
    target = y[idx] if kind == "classification" else y[idx].double()
    candidate = FrozenLoss(tree, kind)

    before = measure_of(preds, target)
    p = preds.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in range(steps):
        value = candidate(p, target)
        if not value.requires_grad:
            return RejectionResult(False, 0.0, "rejected: the loss does not depend on the prediction",
                                   before, before, measure)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    with torch.no_grad():
        after = measure_of(p.detach(), target)
    improvement = before - after
    what = "task metric" if measure == "metric" else "task loss"
    numbers = f"{what} ({name}) {before:.6g} -> {after:.6g} (improvement {improvement:.3g})"
    if not math.isfinite(improvement):
        return RejectionResult(False, improvement, f"rejected: non-finite {numbers}", before, after, measure)
    if improvement <= min_improvement:
        return RejectionResult(False, improvement,
                               f"rejected: minimising the loss does not improve the {what}: {numbers}, "
                               f"needs > {min_improvement:g} over {len(idx)} samples and {steps} Adam steps",
                               before, after, measure)
    return RejectionResult(True, improvement, f"accepted: {numbers}", before, after, measure)


def gradient_signature(tree: Node, kind: str, num_classes: int, *, seed: int, samples: int = 32) -> list[float]:
    """DESIGN §1.5 (3): per-sample gradient norms of the loss w.r.t. the predictions at fixed inputs.

    Inputs are drawn on the CPU from ``seed`` (so signatures compare across devices and runs): logits
    ~ N(0, 1) with random classes, or outputs and targets ~ N(0, 1) for regression. The gradient of
    the per-sample loss (summed over classes, not averaged over the batch) is taken in float64.
    A non-finite gradient gives the empty list, which :func:`signature_is_valid` reports as invalid
    and :func:`signatures_match` never matches.
    """
    gen = make_generator(derive_seed(seed, "gradient-signature"), "cpu")
    if kind == "classification":
        preds = torch.randn(samples, num_classes, generator=gen, dtype=torch.float64)
        target = torch.randint(0, num_classes, (samples,), generator=gen)
    else:
        preds = torch.randn(samples, 1, generator=gen, dtype=torch.float64)
        target = torch.randn(samples, 1, generator=gen, dtype=torch.float64)
    frozen = compile_frozen(tree, [1.0] * tree.num_edges)
    p = preds.requires_grad_(True)
    y, f = prepare(kind, p, target)
    total = (frozen.fn(y, f) * frozen.scale).sum()
    if total.requires_grad:
        (grad,) = torch.autograd.grad(total, [p], allow_unused=True)
        grad = torch.zeros_like(p) if grad is None else grad
    else:
        grad = torch.zeros_like(p)
    norms = grad.detach().norm(dim=1)
    if not bool(torch.isfinite(norms).all()):
        return []
    return norms.tolist()


def signature_is_valid(signature: Sequence[float] | None) -> bool:
    return bool(signature) and all(math.isfinite(v) for v in signature)


def signatures_match(a: Sequence[float] | None, b: Sequence[float] | None, tolerance: float = 1e-6) -> bool:
    """All entries agree within ``tolerance``: absolutely for magnitudes below 1, relatively above.

    That is, ``|a_i - b_i| <= tolerance * max(1, |a_i|, |b_i|)`` for every i. Invalid (empty,
    non-finite) or differently sized signatures never match.
    """
    if not signature_is_valid(a) or not signature_is_valid(b) or len(a) != len(b):
        return False
    return all(abs(u - v) <= tolerance * max(1.0, abs(u), abs(v)) for u, v in zip(a, b))
