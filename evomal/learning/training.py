"""Learning with a candidate loss: unrolled local search, partial training, fitness, meta-testing.

DESIGN §1.4 (local search), §1.6 (fitness), §1.7 (meta-test). Data stay on their device; batches are
drawn by index with a seeded ``torch.Generator`` on that device (no DataLoader, no global RNG). Every
random stream has its own seed derived from the experiment seed (``devices.derive_seed``), so runs
with the same seed are identical and two losses trained with one seed see the same batches.

A bad candidate never raises: non-finite values end the run early with a reason.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from evomal.losses.modules import CompiledLoss, FrozenLoss, baseline_loss, loss_value
from evomal.learning.devices import derive_seed, make_generator

Reinit = Callable[[nn.Module, int], None]

#: points of a fitness training curve besides step 0 (more only add validation passes, never change training)
CURVE_POINTS = 10


def _default_reinit() -> Reinit:
    from evomal.tasks.models import reinitialize

    return reinitialize


# --------------------------------------------------------------------------- batches
class BatchSampler:
    """Seeded epoch-wise shuffling: each epoch is a fresh permutation cut into full batches.

    Indices are drawn on the data's device, so a batch is one gather with no host round trip.
    A batch larger than the data is clipped to the data size.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str) -> None:
        if n < 1:
            raise ValueError("cannot draw batches from an empty split")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n = n
        self.batch_size = min(batch_size, n)
        self.device = torch.device(device)
        self.generator = make_generator(seed, self.device)
        self._perm: Tensor | None = None
        self._pos = n

    def next(self) -> Tensor:
        if self._pos + self.batch_size > self.n:
            self._perm = torch.randperm(self.n, generator=self.generator, device=self.device)
            self._pos = 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx


def _split(task, which: str) -> tuple[Tensor, Tensor]:
    return getattr(task, f"x_{which}"), getattr(task, f"y_{which}")


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def metric(model: nn.Module, x: Tensor, y: Tensor, kind: str, *, chunk: int = 4096) -> float:
    """Error rate (classification) or MSE (regression) over all of ``x``, in chunks, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], chunk):
            out = model(x[start:start + chunk])
            target = y[start:start + chunk]
            if kind == "classification":
                total += (out.argmax(dim=1) != target).sum()
            else:
                total += (out.double() - target.reshape(out.shape).double()).square().sum()
        denom = y.shape[0] if kind == "classification" else y.numel()
        return float(total) / max(denom, 1)
    finally:
        model.train(was_training)


def _training_loss(loss_fn) -> Callable[[Tensor, Tensor], Tensor]:
    """A loss network is trained with its weights fixed, so use the cheaper literal-weight code."""
    if isinstance(loss_fn, CompiledLoss):
        loss_fn = loss_fn.frozen()
    if isinstance(loss_fn, FrozenLoss):
        return loss_fn.function
    return loss_fn


def _params_finite(params: Sequence[Tensor]) -> Tensor:
    return torch.stack([torch.isfinite(p).all() for p in params]).all()


# --------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """``curve``: (step, mean training loss since the previous point, validation metric)."""

    curve: list[tuple[int, float, float]]
    diverged: bool
    reason: str | None
    steps: int
    seconds: float
    #: (step, validation metric) at the ``checkpoints`` reached; ``stopped``: ended by ``on_checkpoint``
    checkpoints: list[tuple[int, float]] = field(default_factory=list)
    stopped: bool = False


def train(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], task, *, steps: int, lr: float,
          momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, batch_size: int = 128,
          seed: int = 0, milestones: Iterable[int] = (), gamma: float = 0.1, eval_every: int | None = None,
          check_every: int = 25, checkpoints: Iterable[int] = (),
          on_checkpoint: Callable[[int, float], str | None] | None = None) -> TrainResult:
    """Train ``model`` in place with SGD (+ MultiStepLR over steps) under ``loss_fn``.

    Batches come from ``seed`` alone, so two losses trained with one seed see the same batches.
    The validation metric is taken every ``eval_every`` steps and always after the last step; with
    ``eval_every`` also before the first (step 0, training loss NaN). Evaluating does not change training.
    Divergence (a non-finite loss or parameter, checked every ``check_every`` steps to avoid a device
    sync per step) stops training early with ``diverged=True`` and a reason; so does a loss that does
    not depend on the network output (``diverged=False``, with a reason).
    At each of ``checkpoints`` (steps) the validation metric is recorded, and ``on_checkpoint(step, metric)``
    may return a reason to stop there (early stopping, evomal.learning.early_stop; ``stopped=True``).
    """
    t0 = time.perf_counter()
    kind = task.kind
    checkpoints = set(int(c) for c in checkpoints)
    reached: list[tuple[int, float]] = []
    loss_fn = _training_loss(loss_fn)
    x, y = _split(task, "train")
    x_val, y_val = _split(task, "val")
    sampler = BatchSampler(x.shape[0], batch_size, derive_seed(seed, "train-batches"), x.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    milestones = sorted(int(m) for m in milestones)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma) if milestones else None
    model.train()
    running = torch.zeros((), dtype=torch.float64, device=x.device)  # sum of losses since the last point
    count = 0
    curve: list[tuple[int, float, float]] = []
    step = 0

    def finish(diverged: bool, reason: str | None, stopped: bool = False) -> TrainResult:
        return TrainResult(curve, diverged, reason, step, time.perf_counter() - t0, reached, stopped)

    if steps <= 0 or eval_every:  # the curve starts at the untrained network (no training loss yet)
        curve.append((0, math.nan, metric(model, x_val, y_val, kind)))
    if steps <= 0:  # nothing to train: still one point, so callers always find a final metric
        return finish(False, None)

    for step in range(1, steps + 1):
        idx = sampler.next()
        loss = loss_fn(model(x[idx]), y[idx])
        if not loss.requires_grad:
            return finish(False, "the loss does not depend on the network output; training stopped")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        running += loss.detach()
        count += 1
        record = step == steps or (eval_every and step % eval_every == 0)
        checkpoint = step in checkpoints
        if record or checkpoint or step % check_every == 0:
            total, ok = torch.stack([running, _params_finite(params).double()]).tolist()
            if not math.isfinite(total):
                return finish(True, f"non-finite training loss by step {step}")
            if not ok:
                return finish(True, f"non-finite network parameters by step {step}")
            if record or checkpoint:
                val = metric(model, x_val, y_val, kind)
            if record:
                curve.append((step, total / count, val))
                running.zero_()
                count = 0
            if (record or checkpoint) and not math.isfinite(val):
                return finish(True, f"non-finite validation metric at step {step}")
            if checkpoint:
                reached.append((step, val))
                why = on_checkpoint(step, val) if on_checkpoint is not None else None
                if why is not None:
                    return finish(False, why, stopped=True)
    return finish(False, None)


# --------------------------------------------------------------------------- fitness
@dataclass
class FitnessResult:
    """``fitness``: validation error rate / MSE, ``math.inf`` for a bad loss (``reason`` says why)."""

    fitness: float
    reason: str | None
    curve: list[tuple[int, float, float]]
    seconds: float
    #: early stopping: (step, validation metric) at the checkpoints reached, and the step it stopped at
    checkpoints: list[tuple[int, float]] = field(default_factory=list)
    stopped_at: int | None = None


def fitness(loss, task, model: nn.Module, *, steps: int = 500, lr: float, momentum: float = 0.0,
            nesterov: bool = False, weight_decay: float = 0.0, batch_size: int = 128, seed: int,
            eval_every: int | None = None, reinit: Reinit | None = None, early_stop=None) -> FitnessResult:
    """DESIGN §1.6: re-initialise ``model`` from ``seed``, train ``steps`` SGD steps, score on validation.

    ``early_stop`` (an :class:`evomal.learning.early_stop.ScoreBoard`, built for ``steps``) stops a
    hopeless candidate at a checkpoint: fitness inf, the verdict as reason. None trains every candidate
    to the end (the paper).

    ``eval_every`` defaults to a tenth of ``steps``: the curve (for the tracking) has 11 points, step 0
    included; the fitness is the metric after the last step either way.
    """
    t0 = time.perf_counter()
    if eval_every is None:
        eval_every = max(1, steps // CURVE_POINTS)
    (reinit or _default_reinit())(model, seed)
    stops = {} if early_stop is None else dict(checkpoints=early_stop.steps, on_checkpoint=early_stop.verdict)
    result = train(model, loss, task, steps=steps, lr=lr, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay, batch_size=batch_size, seed=seed, eval_every=eval_every, **stops)
    if result.reason is not None:
        value, reason = math.inf, result.reason
    else:
        value, reason = result.curve[-1][2], None
    return FitnessResult(value, reason, result.curve, time.perf_counter() - t0, result.checkpoints,
                         result.steps if result.stopped else None)


# --------------------------------------------------------------------------- local search
def differentiable_sgd(model: nn.Module, params: dict[str, Tensor], batches: Sequence[tuple[Tensor, Tensor]],
                       loss_of: Callable[[Tensor, Tensor], Tensor], *, lr: float, momentum: float = 0.0,
                       nesterov: bool = False, weight_decay: float = 0.0,
                       forward: Callable[[dict[str, Tensor], Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """SGD steps (one per batch) as a differentiable function of ``params`` and of the loss's inputs.

    ``forward(params, x)`` runs the network (default ``functional_call(model, params, (x,))``; the
    batched search passes a stacked one, evomal.learning.batched).

    Under ``torch.no_grad`` it computes the same values without building the outer graph.
    The update is ``torch.optim.SGD``'s with dampening 0: g += wd * p; buf = g (first step) or
    momentum * buf + g; direction = g + momentum * buf (Nesterov) or buf; p -= lr * direction.
    """
    names = list(params)
    values = list(params.values())
    buffers: list[Tensor] | None = None
    differentiable = torch.is_grad_enabled()
    for xb, yb in batches:
        with torch.enable_grad():  # the inner gradient is part of the function, even under no_grad
            if not differentiable:  # plain values: each step needs its own leaves
                values = [v.detach().requires_grad_(True) for v in values]
            current = dict(zip(names, values))
            out = functional_call(model, current, (xb,)) if forward is None else forward(current, xb)
            loss = loss_of(out, yb)
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, values, create_graph=differentiable, allow_unused=True)
            else:
                grads = (None,) * len(values)
        grads = [torch.zeros_like(v) if g is None else g for v, g in zip(values, grads)]
        # torch.add(a, b, alpha=c) is one fused kernel for a + c * b (these tensors are the network's size)
        if weight_decay:
            grads = [torch.add(g, v, alpha=weight_decay) for g, v in zip(grads, values)]
        if momentum:
            if buffers is None:
                buffers = grads
            else:
                buffers = [torch.add(g, b, alpha=momentum) for b, g in zip(buffers, grads)]
            if nesterov:
                grads = [torch.add(g, b, alpha=momentum) for g, b in zip(grads, buffers)]
            else:
                grads = buffers
        values = [torch.add(v, g, alpha=-lr) for v, g in zip(values, grads)]
    return dict(zip(names, values))


def meta_objective(loss_fn, kind: str, weights: Tensor, model: nn.Module, params: dict[str, Tensor],
                   train_batches: Sequence[tuple[Tensor, Tensor]], val_batch: tuple[Tensor, Tensor], *,
                   lr: float, momentum: float = 0.0, nesterov: bool = False,
                   weight_decay: float = 0.0) -> Tensor:
    """Task loss on ``val_batch`` after differentiable SGD steps under the candidate loss.

    ``loss_fn`` is a compiled expression (``compile_expression``); the result is differentiable in
    ``weights``.
    """
    stepped = differentiable_sgd(model, params, train_batches,
                                 lambda out, target: loss_value(loss_fn, kind, weights, out, target),
                                 lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    x_val, y_val = val_batch
    return baseline_loss(kind)(functional_call(model, stepped, (x_val,)), y_val)


def meta_gradient(loss_fn, kind: str, weights: Tensor, model: nn.Module, params: dict[str, Tensor],
                  train_batches: Sequence[tuple[Tensor, Tensor]], val_batch: tuple[Tensor, Tensor],
                  **sgd) -> tuple[Tensor, Tensor]:
    """(meta-loss, its gradient w.r.t. ``weights``), both detached; zeros where the weights play no part."""
    meta_loss = meta_objective(loss_fn, kind, weights, model, params, train_batches, val_batch, **sgd)
    (grad,) = torch.autograd.grad(meta_loss, [weights], allow_unused=True)
    return meta_loss.detach(), torch.zeros_like(weights) if grad is None else grad


@dataclass
class LocalSearchResult:
    """``curve``: validation task loss of each meta step; ``status`` "ok" or "failed" (see ``reason``)."""

    weights: Tensor
    curve: list[float]
    seconds: float
    status: str
    reason: str | None = None
    steps: int = 0


def _plan_for(plan, task, model: nn.Module, *, steps: int, inner_steps: int, batch_size: int, seed: int,
              reinit: Reinit):
    """``plan`` checked against these settings, or one that stores no initial networks (the same batches
    and re-initialisations, drawn here): a search always takes its meta steps from a plan."""
    from evomal.learning.plan import LocalSearchPlan

    if plan is None:
        return LocalSearchPlan.build(task, model, steps=steps, inner_steps=inner_steps, batch_size=batch_size,
                                     seed=seed, reinit=reinit, max_bytes=0)
    plan.check(task, steps=steps, inner_steps=inner_steps, batch_size=batch_size, seed=seed)
    return plan


def unrolled_local_search(loss: CompiledLoss, task, model: nn.Module, *, steps: int = 250,
                          meta_lr: float = 1e-3, inner_steps: int = 1, lr: float, momentum: float = 0.0,
                          nesterov: bool = False, weight_decay: float = 0.0, batch_size: int = 128,
                          seed: int, reinit: Reinit | None = None, plan=None) -> LocalSearchResult:
    """DESIGN §1.4: optimise the edge weights of ``loss`` (any loss module's ``weights``: ML3's network
    too) by differentiating through SGD steps.

    Each meta step re-initialises ``model`` (seed derived from ``(seed, step)``), takes ``inner_steps``
    differentiable SGD steps on training batches under the candidate loss, measures the task loss
    (CE / MSE) on a validation batch and takes an Adam step on the weights. ``loss`` is not modified;
    the learned weights are returned. A non-finite meta-loss or meta-gradient stops the search and
    keeps the weights reached so far (all finite), with status "failed".

    ``plan`` (an :class:`evomal.learning.plan.LocalSearchPlan` built for the same task, model, seed and
    settings) supplies the initial networks and batches that every candidate shares; the result is
    bitwise the same as without it.
    """
    t0 = time.perf_counter()
    reinit = reinit or _default_reinit()
    kind = task.kind
    if loss.kind != kind:
        raise ValueError(f"a {loss.kind} loss cannot be meta-learned on the {kind} task {task.name!r}")
    # the element-wise function of the parameters: compile_expression(tree) for a CompiledLoss, the
    # network for ML3's NeuralLoss (evomal.losses.families): the same search tunes any loss's parameters
    fn = loss.compiled
    x, y = _split(task, "train")
    x_val, y_val = _split(task, "val")
    device = x.device
    weights = loss.weights.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([weights], lr=meta_lr)
    plan = _plan_for(plan, task, model, steps=steps, inner_steps=inner_steps, batch_size=batch_size, seed=seed,
                     reinit=reinit)
    was_training = model.training
    model.train()
    curve: list[float] = []
    status, reason = "ok", None
    try:
        for step in range(steps):
            params, batches, vidx = plan.meta_step(step, model, reinit, task)
            meta_loss, grad = meta_gradient(fn, kind, weights, model, params, batches, (x_val[vidx], y_val[vidx]),
                                            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
            # one device sync per meta step: the curve value and the finiteness check together
            value, grad_ok = torch.stack([meta_loss.double(), torch.isfinite(grad).all().double()]).tolist()
            if not math.isfinite(value):
                status, reason = "failed", f"non-finite meta-loss ({value}) at meta step {step}"
                break
            if not grad_ok:
                status, reason = "failed", f"non-finite meta-gradient at meta step {step}"
                break
            curve.append(value)
            weights.grad = grad
            opt.step()
    finally:
        model.train(was_training)
    return LocalSearchResult(weights.detach().clone(), curve, time.perf_counter() - t0, status, reason,
                             len(curve))
