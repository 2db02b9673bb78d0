"""Several losses trained at once: one stacked network per group, ``torch.func.vmap`` over the members.

The members of a group share the task and the settings; the candidates of a job also share the seed, so
they share the initial network and the batch order and differ only in the loss (the meta-test's runs
differ in the seed too: each member then draws its own batches). Their parameters are stacked
along a new first dimension and the network runs once per step for all of them (``vmap`` of
``functional_call``); each member's loss is applied to its own slice of the output, and the members' losses
are summed before one backward pass. No operation mixes slices, so member k's gradient is exactly the
gradient of its own loss: the results equal those of training the members one after another
(:mod:`evomal.learning.training`) up to the rounding of batched matrix products, and a member that
diverges changes nothing for the others (it leaves the group at once).

Worth it where the per-step overhead matters (small fully connected networks on CPU: about 1.2-1.4x
for an MLP [100, 100], docs/benchmarks.md "Batched candidates") and on CUDA; on CPU a large network or a
convolutional one is as fast or slower stacked, which :func:`use_batching` decides. Networks with
buffers (BatchNorm) or dropout are never batched: their state and randomness are per network.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from evomal.learning.devices import derive_seed
from evomal.learning.training import (CURVE_POINTS, BatchSampler, FitnessResult, LocalSearchResult, Reinit,
                                      TrainResult, _default_reinit, _plan_for, _split, _training_loss,
                                      differentiable_sgd)

#: batching modes of the config's ``batching`` key
MODES = ("auto", "on", "off")
#: ``auto`` batches on CPU up to this many network parameters (measured, docs/benchmarks.md "Batched")
AUTO_MAX_PARAMS = 250_000
#: the most members of one group (a shard's candidates are cut into groups of this size, in order)
MAX_GROUP = 16


def unbatchable_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained as a stacked group, or None if it can."""
    if any(True for _ in model.buffers()):
        return "the network has buffers (BatchNorm running statistics)"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        return "the network has dropout"
    if not all(p.requires_grad for p in model.parameters()):
        return "the network has frozen parameters"
    return None


def use_batching(mode: str, model: nn.Module, device: torch.device | str) -> bool:
    """Whether ``mode`` (one of MODES; YAML's true and false read as on and off) batches this network
    on ``device``."""
    mode = {True: "on", False: "off"}.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"batching must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or unbatchable_reason(model) is not None:
        return False
    if mode == "on" or torch.device(device).type != "cpu":
        return True
    # on CPU a vmapped convolution was no faster than one network at a time (LeNet-5, docs/benchmarks.md)
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return False
    return sum(p.numel() for p in model.parameters()) <= AUTO_MAX_PARAMS


def groups(items: Sequence, size: int = MAX_GROUP) -> list[list]:
    """``items`` cut in order into groups of at most ``size``: fixed by the items alone, so a resumed job
    forms the same groups (a member's values never depend on which job computed them)."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _stacked_forward(model: nn.Module, names: Sequence[str], *, own_inputs: bool = False
                     ) -> Callable[[Sequence[Tensor], Tensor], Tensor]:
    """(stacked parameter values, input) -> stacked outputs ``[members, batch, ...]``; the input is shared
    by the members, or stacked too (``own_inputs``: each member its own batch)."""
    def one(values, x):
        return functional_call(model, dict(zip(names, values)), (x,))

    return vmap(one, in_dims=(0, 0 if own_inputs else None))


@torch.no_grad()
def group_metric(model: nn.Module, names: Sequence[str], values: Sequence[Tensor], x: Tensor, y: Tensor,
                 kind: str, *, chunk: int = 4096) -> list[float]:
    """Per member: error rate (classification) or MSE (regression) over all of ``x`` (training.metric's)."""
    forward = _stacked_forward(model, names)
    members = values[0].shape[0]
    total = torch.zeros(members, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        out = forward(values, x[start:start + chunk])
        target = y[start:start + chunk]
        if kind == "classification":
            total += (out.argmax(dim=-1) != target).sum(dim=1)
        else:
            diff = out.double() - target.reshape(out.shape[1:]).double()
            total += diff.square().flatten(1).sum(dim=1)
    denom = y.shape[0] if kind == "classification" else y.numel()
    return [v / max(denom, 1) for v in total.tolist()]


@dataclass
class GroupMember:
    """One member's training run and its network's final parameters (for a test metric)."""

    result: TrainResult
    params: dict[str, Tensor]


def _sgd(params: list[Tensor], lr: float, momentum: float, nesterov: bool, weight_decay: float,
         buffers: list[Tensor | None] | None = None) -> torch.optim.SGD:
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for p, buf in zip(params, buffers or []):
        if buf is not None:
            opt.state[p]["momentum_buffer"] = buf
    return opt


def train_group(model: nn.Module, inits: Sequence[Mapping[str, Tensor]], losses: Sequence[Callable], task, *,
                steps: int, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                batch_size: int = 128, seed: int | Sequence[int] = 0, milestones: Iterable[int] = (),
                gamma: float = 0.1, eval_every: int | None = None, check_every: int = 25) -> list[GroupMember]:
    """:func:`evomal.learning.training.train` for every ``(inits[k], losses[k])`` at once.

    ``model`` gives the network's structure (its own parameters are not used or changed); ``inits``
    are the members' initial parameters by name. ``seed`` is every member's batch seed, or one per
    member. The curves, reasons and steps are those of ``train``; ``seconds`` is the group's wall time
    shared equally among its members.
    """
    t0 = time.perf_counter()
    if len(inits) != len(losses) or not losses:
        raise ValueError(f"a group needs one initial network per loss, got {len(inits)} and {len(losses)}")
    kind = task.kind
    fns = [_training_loss(fn) for fn in losses]
    x, y = _split(task, "train")
    x_val, y_val = _split(task, "val")
    seeds = [int(seed)] * len(losses) if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != len(losses):
        raise ValueError(f"a group needs one seed per loss, got {len(seeds)} and {len(losses)}")
    samplers = {s: BatchSampler(x.shape[0], batch_size, derive_seed(s, "train-batches"), x.device)
                for s in dict.fromkeys(seeds)}
    shared = len(samplers) == 1  # one batch for all members: the input is not stacked
    names = [n for n, _ in model.named_parameters()]
    forward = _stacked_forward(model, names, own_inputs=not shared)
    params = [torch.stack([init[n].detach() for init in inits]).requires_grad_(True) for n in names]
    opt = _sgd(params, lr, momentum, nesterov, weight_decay)
    current_lr, drops = lr, Counter(int(m) for m in milestones)
    active = list(range(len(losses)))  # member index of each slice
    running = torch.zeros(len(active), dtype=torch.float64, device=x.device)
    count = 0
    curves: list[list] = [[] for _ in losses]
    ends: dict[int, tuple[bool, str | None, int]] = {}
    finals: dict[int, dict[str, Tensor]] = {}

    def leave(slices: dict[int, tuple[bool, str | None]], step: int) -> None:
        """Members at these slice positions end here (diverged or not, with a reason)."""
        nonlocal params, opt, running, active
        for pos, (diverged, reason) in slices.items():
            ends[active[pos]] = (diverged, reason, step)
            finals[active[pos]] = {n: p[pos].detach().clone() for n, p in zip(names, params)}
        keep = [pos for pos in range(len(active)) if pos not in slices]
        if not keep:
            active = []
            return
        index = torch.tensor(keep, device=x.device)
        buffers = [opt.state[p].get("momentum_buffer") for p in params]
        params = [p.detach()[index].clone().requires_grad_(True) for p in params]
        opt = _sgd(params, current_lr, momentum, nesterov, weight_decay,
                   [None if b is None else b[index].clone() for b in buffers])
        running = running[index]
        active = [active[pos] for pos in keep]

    if steps <= 0 or eval_every:
        for k, v in enumerate(group_metric(model, names, params, x_val, y_val, kind)):
            curves[k].append((0, math.nan, v))
    step = 0
    for step in range(1, steps + 1 if steps > 0 else 1):
        if not active:
            break
        drawn = {s: sampler.next() for s, sampler in samplers.items()}  # every seed's batch, as train() draws it

        def member_losses() -> list[Tensor]:
            if shared:
                idx = next(iter(drawn.values()))
                out, targets = forward(params, x[idx]), [y[idx]] * len(active)
            else:
                idx = torch.stack([drawn[seeds[k]] for k in active])
                out, targets = forward(params, x[idx]), y[idx]
            return [fns[k](out[pos], targets[pos]) for pos, k in enumerate(active)]

        losses_now = member_losses()
        flat = {pos: (False, "the loss does not depend on the network output; training stopped")
                for pos, loss in enumerate(losses_now) if not loss.requires_grad}
        if flat:  # as train(): such a member stops before its first update
            leave(flat, step)
            if not active:
                break
            losses_now = member_losses()
        stacked_loss = torch.stack(losses_now)
        opt.zero_grad(set_to_none=True)
        stacked_loss.sum().backward()
        opt.step()
        if step in drops:  # MultiStepLR's rule, in the same float arithmetic
            current_lr = current_lr * gamma ** drops[step]
            for group in opt.param_groups:
                group["lr"] = current_lr
        running += stacked_loss.detach()
        count += 1
        record = step == steps or bool(eval_every and step % eval_every == 0)
        if not (record or step % check_every == 0):
            continue
        finite_params = torch.stack([torch.isfinite(p).flatten(1).all(dim=1) for p in params]).all(dim=0)
        totals, oks = torch.stack([running, finite_params.double()]).tolist()
        bad = {pos: (True, f"non-finite training loss by step {step}") for pos, t in enumerate(totals)
               if not math.isfinite(t)}
        bad.update({pos: (True, f"non-finite network parameters by step {step}") for pos, ok in enumerate(oks)
                    if not ok and pos not in bad})
        if record:
            vals = group_metric(model, names, params, x_val, y_val, kind)
            for pos, k in enumerate(active):
                if pos not in bad:
                    curves[k].append((step, totals[pos] / count, vals[pos]))
            bad.update({pos: (True, f"non-finite validation metric at step {step}") for pos, v in enumerate(vals)
                        if not math.isfinite(v) and pos not in bad})
            running.zero_()
            count = 0
        if bad:
            leave(bad, step)
    if active:
        leave({pos: (False, None) for pos in range(len(active))}, max(step, 0))
    share = (time.perf_counter() - t0) / len(losses)
    return [GroupMember(TrainResult(curves[k], ends[k][0], ends[k][1], ends[k][2], share), finals[k])
            for k in range(len(losses))]


def local_search_group(losses: Sequence, task, model: nn.Module, *, steps: int = 250, meta_lr: float = 1e-3,
                       inner_steps: int = 1, lr: float, momentum: float = 0.0, nesterov: bool = False,
                       weight_decay: float = 0.0, batch_size: int = 128, seed: int, reinit: Reinit | None = None,
                       plan=None) -> list[LocalSearchResult]:
    """:func:`evomal.learning.training.unrolled_local_search` for every loss of ``losses`` at once.

    Every meta step starts all members from the same re-initialised network and the same batches (as
    the sequential search does for each); the inner SGD steps run on the stacked parameters, and each
    member's meta-gradient reaches only its own weights. A member whose meta-loss or meta-gradient is
    non-finite stops there with the weights reached so far (status "failed"); the others go on.
    """
    from evomal.losses.modules import baseline_loss, loss_value

    t0 = time.perf_counter()
    reinit = reinit or _default_reinit()
    kind = task.kind
    for loss in losses:
        if loss.kind != kind:
            raise ValueError(f"a {loss.kind} loss cannot be meta-learned on the {kind} task {task.name!r}")
    x, y = _split(task, "train")
    x_val, y_val = _split(task, "val")
    device = x.device
    fns = [loss.compiled for loss in losses]
    weights = [loss.weights.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
               for loss in losses]
    opts = [torch.optim.Adam([w], lr=meta_lr) for w in weights]
    plan = _plan_for(plan, task, model, steps=steps, inner_steps=inner_steps, batch_size=batch_size, seed=seed,
                     reinit=reinit)
    names = [n for n, _ in model.named_parameters()]
    stacked = _stacked_forward(model, names)

    def forward(params: dict[str, Tensor], xb: Tensor) -> Tensor:
        return stacked([params[n] for n in names], xb)

    curves: list[list[float]] = [[] for _ in losses]
    status: dict[int, tuple[str, str | None]] = {}
    active = list(range(len(losses)))
    for step in range(steps):
        if not active:
            break
        start, batches, vidx = plan.meta_step(step, model, reinit, task)
        params = {n: start[n].detach().unsqueeze(0).expand(len(active), *start[n].shape).clone().requires_grad_(True)
                  for n in names}
        members = [(fns[k], weights[k]) for k in active]

        def group_loss(out: Tensor, target: Tensor) -> Tensor:
            return torch.stack([loss_value(fn, kind, w, out[pos], target)
                                for pos, (fn, w) in enumerate(members)]).sum()

        stepped = differentiable_sgd(model, params, batches, group_loss, lr=lr, momentum=momentum,
                                     nesterov=nesterov, weight_decay=weight_decay, forward=forward)
        out_val = forward(stepped, x_val[vidx])
        meta = torch.stack([baseline_loss(kind)(out_val[pos], y_val[vidx]) for pos in range(len(active))])
        grads = torch.autograd.grad(meta.sum(), [weights[k] for k in active], allow_unused=True)
        grads = [torch.zeros_like(weights[k]) if g is None else g for k, g in zip(active, grads)]
        oks = torch.stack([torch.isfinite(g).all() for g in grads]).double()
        values, grad_oks = torch.stack([meta.detach().double(), oks]).tolist()
        still = []
        for pos, k in enumerate(active):
            if not math.isfinite(values[pos]):
                status[k] = ("failed", f"non-finite meta-loss ({values[pos]}) at meta step {step}")
            elif not grad_oks[pos]:
                status[k] = ("failed", f"non-finite meta-gradient at meta step {step}")
            else:
                curves[k].append(values[pos])
                weights[k].grad = grads[pos]
                opts[k].step()
                still.append(k)
        active = still
    share = (time.perf_counter() - t0) / len(losses)
    return [LocalSearchResult(weights[k].detach().clone(), curves[k], share, *status.get(k, ("ok", None)),
                              len(curves[k])) for k in range(len(losses))]


def fitness_group(losses: Sequence, task, model: nn.Module, *, steps: int = 500, lr: float, momentum: float = 0.0,
                  nesterov: bool = False, weight_decay: float = 0.0, batch_size: int = 128, seed: int,
                  eval_every: int | None = None, reinit: Reinit | None = None) -> list[FitnessResult]:
    """:func:`evomal.learning.training.fitness` of every loss at once: all start from ``model``
    re-initialised from ``seed`` and see the same batches."""
    if eval_every is None:
        eval_every = max(1, steps // CURVE_POINTS)
    (reinit or _default_reinit())(model, seed)
    init = {n: p.detach() for n, p in model.named_parameters()}
    members = train_group(model, [init] * len(losses), losses, task, steps=steps, lr=lr, momentum=momentum,
                          nesterov=nesterov, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                          eval_every=eval_every)
    return [FitnessResult(math.inf if m.result.reason is not None else m.result.curve[-1][2], m.result.reason,
                          m.result.curve, m.result.seconds) for m in members]
