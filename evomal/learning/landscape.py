"""Loss landscapes around trained networks (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

The training objective (the task loss: cross-entropy or MSE, whatever loss trained the network) on a fixed
training subset is evaluated at ``theta + a * d1`` (1-D) and ``theta + a * d1 + b * d2`` (2-D), where
``d1, d2`` are Gaussian directions drawn once from a seed and filter-normalised against each network's
own weights: every filter (a row of a linear layer's weight, an output channel of a convolution) of the
direction is rescaled to the norm of that filter of the weights, so networks whose weights have
different scales are compared on the same relative footing. As in the authors' code (``ignore='biasbn'``)
parameters with one dimension (biases, normalisation layers) are not perturbed.

The networks are evaluated at perturbed parameters with ``torch.func.functional_call``; the modules are
never modified.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from evomal.learning.devices import derive_seed, make_generator
from evomal.learning.training import _split, metric, train
from evomal.losses.modules import baseline_loss

Direction = dict[str, Tensor]


# --------------------------------------------------------------------------- directions
def random_directions(params: Mapping[str, Tensor], seed: int, count: int = 2) -> list[Direction]:
    """``count`` Gaussian directions shaped like ``params``, from ``seed`` alone.

    Drawn on the CPU and then moved, so every device and every network of one architecture gets the
    same numbers: that is what makes two networks' landscapes comparable.
    """
    gen = make_generator(derive_seed(seed, "landscape-directions"), "cpu")
    return [{name: torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
             for name, p in params.items()} for _ in range(count)]


def filter_normalize(direction: Mapping[str, Tensor], params: Mapping[str, Tensor], *,
                     eps: float = 1e-10) -> Direction:
    """Li et al.'s filter normalisation: each filter of ``direction`` gets the norm of that filter of ``params``.

    A filter is a slice along the first dimension (an output neuron or channel); one-dimensional
    parameters get a zero direction (biases and normalisation layers stay fixed).
    """
    out = {}
    for name, d in direction.items():
        w = params[name]
        if d.dim() <= 1:
            out[name] = torch.zeros_like(d)
            continue
        d_norm = torch.linalg.vector_norm(d.flatten(1), dim=1)
        w_norm = torch.linalg.vector_norm(w.detach().flatten(1), dim=1)
        out[name] = d * (w_norm / (d_norm + eps)).reshape(-1, *([1] * (d.dim() - 1)))
    return out


def landscape_directions(params: Mapping[str, Tensor], seed: int) -> tuple[Direction, Direction]:
    """The two filter-normalised directions of the 1-D (``d1``) and 2-D (``d1``, ``d2``) landscapes."""
    d1, d2 = random_directions(params, seed, 2)
    return filter_normalize(d1, params), filter_normalize(d2, params)


# --------------------------------------------------------------------------- evaluation
def training_subset(task, samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed, seeded subset of the training split (all of it when ``samples`` exceeds its size)."""
    x, y = _split(task, "train")
    gen = make_generator(derive_seed(seed, "landscape-samples"), "cpu")
    idx = torch.randperm(x.shape[0], generator=gen)[:samples].sort().values.to(x.device)
    return x[idx], y[idx]


@torch.no_grad()
def objective_at(model: nn.Module, params: Mapping[str, Tensor], objective: Callable[[Tensor, Tensor], Tensor],
                 x: Tensor, y: Tensor, *, chunk: int = 2048) -> Tensor:
    """Task loss of ``model`` evaluated with ``params`` (eval mode; a 0-d tensor, no device sync)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        out = functional_call(model, dict(params), (x[start:start + chunk],))
        total += objective(out, y[start:start + chunk]).double() * out.shape[0]
    return total / x.shape[0]


def _shifted(params: Mapping[str, Tensor], steps: Sequence[tuple[float, Direction]]) -> Direction:
    out = {}
    for name, p in params.items():
        value = p.detach()
        for alpha, d in steps:
            value = torch.add(value, d[name], alpha=alpha)
        out[name] = value
    return out


def evaluate_landscape(model: nn.Module, objective: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                       directions: tuple[Direction, Direction], coords_1d: Sequence[float],
                       coords_2d: Sequence[float]) -> tuple[list[float], list[list[float]]]:
    """(1-D values along ``d1``, 2-D grid ``[i][j]`` at ``coords_2d[i] * d1 + coords_2d[j] * d2``)."""
    d1, d2 = directions
    params = {n: p for n, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    try:
        line = torch.stack([objective_at(model, _shifted(params, [(a, d1)]), objective, x, y) for a in coords_1d])
        grid = torch.stack([torch.stack([objective_at(model, _shifted(params, [(a, d1), (b, d2)]), objective, x, y)
                                         for b in coords_2d]) for a in coords_2d])
    finally:
        model.train(was_training)
    return line.tolist(), grid.tolist()  # one device sync for the whole landscape


# --------------------------------------------------------------------------- networks trained by each loss
@dataclass
class Landscape:
    """One method's network: trained from ``train_seed``, then evaluated around its final parameters."""

    method: str
    center: float
    line: list[float]
    grid: list[list[float]]
    test_metric: float
    diverged: bool = False
    reason: str | None = None
    direction_norms: list[float] = field(default_factory=list)  # ||d1||, ||d2|| after normalisation


def grid_coordinates(points: int, span: float) -> list[float]:
    return torch.linspace(-span, span, points, dtype=torch.float64).tolist()


def landscapes(losses: Mapping[str, Callable], task, build: Callable[[int], nn.Module], *, train_seed: int,
               direction_seed: int, steps: int, points_1d: int, points_2d: int, span: float, samples: int,
               lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
               batch_size: int = 128, milestones: Sequence[int] = (), gamma: float = 0.1
               ) -> tuple[dict, list[Landscape]]:
    """Train ``build(train_seed)`` under each loss (same seed, batches, settings), then map its landscape.

    Every network is evaluated along the same random directions (``direction_seed``), each
    filter-normalised against that network's weights, on the same training subset. Returns the shared
    coordinates and one :class:`Landscape` per method, in the order of ``losses``.
    """
    objective = baseline_loss(task.kind)
    x, y = training_subset(task, samples, direction_seed)
    coords = {"coords_1d": grid_coordinates(points_1d, span), "coords_2d": grid_coordinates(points_2d, span),
              "samples": int(x.shape[0])}
    x_test, y_test = _split(task, "test")
    out = []
    for method, loss in losses.items():
        model = build(train_seed)
        r = train(model, loss, task, steps=steps, lr=lr, momentum=momentum, nesterov=nesterov,
                  weight_decay=weight_decay, batch_size=batch_size, seed=train_seed, milestones=milestones,
                  gamma=gamma)
        params = {n: p.detach() for n, p in model.named_parameters()}
        directions = landscape_directions(params, direction_seed)
        line, grid = evaluate_landscape(model, objective, x, y, directions, coords["coords_1d"], coords["coords_2d"])
        center = float(objective_at(model, params, objective, x, y))
        norms = [float(torch.sqrt(sum(v.double().square().sum() for v in d.values()))) for d in directions]
        test = math.inf if r.reason is not None else metric(model, x_test, y_test, task.kind)  # as meta_test
        out.append(Landscape(method, center, line, grid, test, r.diverged, r.reason, norms))
    return coords, out
