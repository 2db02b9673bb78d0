"""Pieces shared by the registry's networks: ``Network`` (features + head), ``Reshape`` and the
resolution of the (C, H, W) / (C, L) shape a convolutional model sees (the ``image_shape`` option)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from evomal.tasks.models.registry import _int_list

__all__ = ["Network", "Reshape"]

class Reshape(nn.Module):
    """Reshape ``(N, d)`` inputs to ``(N, *shape)``."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _spatial_input(
    model: str, input_shape: tuple[int, ...], image_shape: Sequence[int] | None, dims: tuple[int, ...] = (3,)
) -> tuple[tuple[int, ...], list[nn.Module]]:
    """Resolve the (C, H, W) [or (C, L)] shape a convolutional model sees, and a reshape if needed."""
    if image_shape is not None:
        shape = tuple(_int_list(model, "image_shape", image_shape))
        if len(shape) not in dims:
            raise ValueError(f"model {model!r}: image_shape must have {' or '.join(map(str, dims))} entries, got {shape}")
        if math.prod(shape) != math.prod(input_shape):
            raise ValueError(
                f"model {model!r}: image_shape {shape} has {math.prod(shape)} values per sample but inputs of "
                f"shape {input_shape} have {math.prod(input_shape)}"
            )
        return shape, ([] if shape == input_shape else [Reshape(shape)])
    if len(input_shape) in dims:
        return input_shape, []
    want = " or ".join({3: "(C, H, W)", 2: "(C, L)"}[d] for d in dims)
    hint = ""
    side = math.isqrt(math.prod(input_shape))
    if len(input_shape) == 1 and side * side == input_shape[0]:
        hint = f", e.g. image_shape=[1, {side}, {side}]"
    elif len(input_shape) == 1 and 2 in dims:
        hint = f", e.g. image_shape=[1, {input_shape[0]}]"
    raise ValueError(
        f"model {model!r} needs inputs of shape {want}, got {input_shape}; "
        f"pass the option image_shape to reshape flat inputs{hint}, or use 'mlp' / 'linear'"
    )


def _conv_out(n: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class Network(nn.Module):
    """A sequential feature extractor followed by a head; all registry models are of this type."""

    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
