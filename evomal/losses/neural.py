"""ML3's neural loss (Bechtle et al., ICPR 2020), in the form the EvoMAL authors use (DESIGN §1.8).

A small network maps each class's (prediction, target) pair to a loss term: 2 -> 50 -> 50 -> 1 with ReLU,
no biases and a Softplus output, so every term is positive. Classification feeds it f_c = softmax(logits)_c
and y_c = one-hot(target)_c and sums the terms over classes, regression feeds the raw output and target;
both average over the batch (``evomal.losses.modules.loss_value``, shared with the symbolic losses).

All network weights are one flat vector (the ``weights`` of the loss file and of the module), so the
unrolled local search that tunes EvoMAL's edge weights tunes ML3's network unchanged: the network is
evaluated functionally on views of that vector.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evomal.losses.codegen import check_kind
from evomal.losses.modules import loss_value

FAMILY = "ml3"
#: fields of the loss file that belong to this family (beside kind and weights)
FIELDS = ("layers", "activation", "output")
#: input (prediction, target), two hidden layers, one output: the EvoMAL authors' ML3 network
LAYERS = (2, 50, 50, 1)


def check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    layers = tuple(int(n) for n in layers)
    if len(layers) < 2 or layers[0] != 2 or layers[-1] != 1 or min(layers) < 1:
        raise ValueError(f"ML3 layers must run from 2 inputs (prediction, target) to 1 output, got {list(layers)}")
    return layers


def weight_shapes(layers: Sequence[int]) -> list[tuple[int, int]]:
    """(out, in) of each bias-free linear layer, in the order of the flat weight vector."""
    return [(n_out, n_in) for n_in, n_out in zip(layers[:-1], layers[1:])]


def num_weights(layers: Sequence[int] = LAYERS) -> int:
    return sum(a * b for a, b in weight_shapes(layers))


def network(layers: Sequence[int] = LAYERS, weights: Tensor | None = None) -> nn.Sequential:
    """The same network as an ``nn.Sequential`` (Linear without bias, ReLU, ..., Softplus), with the flat
    ``weights`` copied in when given: for inspecting a learned loss or reusing it as a module."""
    mods: list[nn.Module] = []
    for i, (n_out, n_in) in enumerate(weight_shapes(layers)):
        mods.append(nn.Linear(n_in, n_out, bias=False))
        mods.append(nn.ReLU() if i < len(layers) - 2 else nn.Softplus())
    net = nn.Sequential(*mods)
    if weights is not None:
        with torch.no_grad():
            for m, w in zip(net[::2], NeuralElementwise(layers).unflatten(torch.as_tensor(weights).float())):
                m.weight.copy_(w)
    return net


def initial_weights(layers: Sequence[int] = LAYERS, *, seed: int) -> Tensor:
    """Kaiming-normal weights (fan-in, ReLU gain), as the reference initialises them, as one vector.

    Drawn on the CPU from a generator seeded with ``seed``: the same values on every device.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) & ((1 << 63) - 1))
    parts = []
    for shape in weight_shapes(layers):
        w = torch.empty(shape, dtype=torch.float32)
        nn.init.kaiming_normal_(w, generator=gen)
        parts.append(w.reshape(-1))
    return torch.cat(parts)


class NeuralElementwise:
    """``fn(w, y, f)``: the network applied to every (f, y) pair, its weights the flat vector ``w``.

    Written with ``torch.nn.functional`` on views of ``w``: stateless, so one instance serves every
    thread (``torch.func.functional_call`` would swap a shared module's parameters in place), and the
    same operations as the standalone export, so both give the same values.
    """

    def __init__(self, layers: Sequence[int] = LAYERS) -> None:
        self.layers = check_layers(layers)
        self.shapes = weight_shapes(self.layers)
        self.sizes = [a * b for a, b in self.shapes]
        self.num_weights = sum(self.sizes)

    def unflatten(self, w: Tensor) -> list[Tensor]:
        if w.shape != (self.num_weights,):
            raise ValueError(f"an ML3 network {list(self.layers)} has {self.num_weights} weights, got {tuple(w.shape)}")
        return [c.view(shape) for c, shape in zip(torch.split(w, self.sizes), self.shapes)]

    def __call__(self, w: Tensor, y: Tensor, f: Tensor) -> Tensor:
        h = torch.stack((f, y.expand_as(f)), dim=-1)  # prediction first, as in the reference
        mats = self.unflatten(w.to(f.dtype))
        for i, m in enumerate(mats):
            h = F.linear(h, m)
            h = torch.relu(h) if i < len(mats) - 1 else F.softplus(h)
        return h.squeeze(-1)


@lru_cache(maxsize=8)
def compiled_network(layers: tuple[int, ...] = LAYERS) -> NeuralElementwise:
    return NeuralElementwise(layers)


class NeuralLoss(nn.Module):
    """ML3's loss network as a loss module: ``forward(output, target)`` with logits and class indices
    (classification) or outputs and targets (regression); ``weights`` is the flat network vector."""

    family = FAMILY

    def __init__(self, kind: str, weights: Tensor | Sequence[float] | None = None, *,
                 layers: Sequence[int] = LAYERS, trainable: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.kind = check_kind(kind)
        self.compiled = compiled_network(check_layers(layers))
        self.layers = self.compiled.layers
        if weights is None:
            weights = initial_weights(self.layers, seed=seed)
        weights = torch.as_tensor(weights, dtype=torch.float32).detach().clone().reshape(-1)
        if weights.numel() != self.compiled.num_weights:
            raise ValueError(f"an ML3 network {list(self.layers)} has {self.compiled.num_weights} weights, "
                             f"{weights.numel()} were given")
        self.weights = nn.Parameter(weights, requires_grad=trainable)
        #: extra fields of the loss file this loss was loaded from
        self.info: dict = {}

    @property
    def expression(self) -> str:
        return describe(self.layers)

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return loss_value(self.compiled, self.kind, self.weights, output, target)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, layers={list(self.layers)}"


def describe(layers: Sequence[int] = LAYERS) -> str:
    return f"ml3({'-'.join(map(str, layers))}, relu, no bias, softplus)"


def formula_text(weights: Sequence[float], doc: dict | None = None) -> str:
    layers = tuple((doc or {}).get("layers", LAYERS))
    norm = math.sqrt(sum(w * w for w in weights))
    return (f"sum over classes of softplus(W{len(layers) - 1} relu(... relu(W1 [f, y]))): network "
            f"{'-'.join(map(str, layers))}, {len(weights)} weights, |w| = {norm:.4g}")


def document(kind: str, weights: Tensor | Sequence[float], *, layers: Sequence[int] = LAYERS, **extra) -> dict:
    """The JSON content of an ML3 loss file: the network's shape and its flat weights as a JSON list."""
    from evomal.losses.families import as_floats, family_document

    layers = check_layers(layers)
    values = as_floats(weights, "ML3 loss")
    if len(values) != num_weights(layers):
        raise ValueError(f"an ML3 network {list(layers)} has {num_weights(layers)} weights, {len(values)} were given")
    return family_document(FAMILY, kind, values, expression=describe(layers), formula=formula_text(values, {"layers": layers}),
                           fields={"layers": list(layers), "activation": "relu", "output": "softplus"}, extra=extra)


def from_document(doc: dict, *, source, trainable: bool = False) -> NeuralLoss:
    try:
        layers = check_layers(doc["layers"])
        if (doc.get("activation"), doc.get("output")) != ("relu", "softplus"):
            raise ValueError(f"activation/output {doc.get('activation')}/{doc.get('output')}; this evomal "
                             "builds relu/softplus networks")
        return NeuralLoss(doc["kind"], [float(w) for w in doc["weights"]], layers=layers, trainable=trainable)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: damaged ML3 loss file ({type(exc).__name__}: {exc})") from None


def torch_source(doc: dict, *, meta: dict | None = None) -> str:
    """Standalone PyTorch source (see evomal.losses.export) with the network weights baked in."""
    from evomal.losses.export import family_source

    layers = check_layers(doc["layers"])
    shapes = weight_shapes(layers)
    body = [
        f"LAYERS = {tuple(layers)!r}",
        "# the bias-free linear layers' weights, (out, in) each, flattened row-major one after the other",
        "WEIGHTS = (",
        *("    " + " ".join(f"{float(w)!r}," for w in doc["weights"][i:i + 4]) for i in range(0, len(doc["weights"]), 4)),
        ")",
        f"SHAPES = {tuple(shapes)!r}",
        "",
        "",
        "def elementwise(y, f, weights):",
        '    """The network on every (f, y) pair: ReLU hidden layers, no biases, Softplus output."""',
        "    h = torch.stack((f, y.expand_as(f)), dim=-1)",
        "    chunks = torch.split(weights, [a * b for a, b in SHAPES])",
        "    for i, (w, shape) in enumerate(zip(chunks, SHAPES)):",
        "        h = torch.nn.functional.linear(h, w.view(shape))",
        "        h = torch.relu(h) if i < len(SHAPES) - 1 else torch.nn.functional.softplus(h)",
        "    return h.squeeze(-1)",
    ]
    return family_source(doc, body, title="Learned loss exported by EvoMAL (ML3: a meta-learned loss network)",
                         weights_doc="the network's weights", meta=meta)
