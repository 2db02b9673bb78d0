"""The model registry: ``register_model``, ``list_models``, ``model_options``, ``build_model`` and the
checkers of model options shared by the builders.

``build_model`` constructs a network on the meta device, then draws its parameters with
:func:`evomal.tasks.models.init.reinitialize` from ``seed`` (the global RNG is never touched).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evomal.tasks.models.init import reinitialize

__all__ = ["build_model", "list_models", "register_model", "model_options"]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _ModelEntry:
    name: str
    builder: Builder
    options: dict[str, Any]


_MODELS: dict[str, _ModelEntry] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding ``builder(input_shape, num_outputs, *, option=default, ...)`` under ``name``.

    The builder's keyword-only parameters are the model's options. It only constructs modules; the
    parameters are drawn afterwards by :func:`reinitialize`.
    """

    def decorator(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        options = {}
        for pname, param in list(inspect.signature(fn).parameters.items())[2:]:
            if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.default is inspect.Parameter.empty:
                raise TypeError(f"builder of model {name!r}: option {pname!r} must be keyword-only with a default")
            options[pname] = param.default
        _MODELS[name] = _ModelEntry(name, fn, options)
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def model_options(name: str) -> dict[str, Any]:
    """Options of model ``name`` with their defaults."""
    return dict(_entry(name).options)


def _entry(name: str) -> _ModelEntry:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_outputs: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **options: Any,
) -> nn.Module:
    """Build model ``name`` for per-sample ``input_shape`` and ``num_outputs`` outputs.

    Parameters are drawn deterministically from ``seed`` (see :func:`reinitialize`) on ``device``;
    the global RNG is left untouched. Unknown names or options raise ``ValueError``.
    """
    entry = _entry(name)
    for key in options:
        if key not in entry.options:
            allowed = ", ".join(sorted(entry.options)) or "(none)"
            raise ValueError(f"unknown option {key!r} for model {name!r}; allowed options: {allowed}")
    input_shape = _check_shape(name, input_shape)
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive integer, got {num_outputs!r}")
    # Construct on the meta device: no memory, no compute and no RNG use for the throw-away default
    # initialisation of torch's layers (fork_rng guards against layers that would draw anyway).
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = entry.builder(input_shape, num_outputs, **options)
    model = model.to_empty(device=device)
    model.input_shape = input_shape
    model.num_outputs = num_outputs
    model.model_name = name
    reinitialize(model, seed)
    model.train()
    return model


def _check_shape(name: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ValueError(f"model {name!r}: input_shape must be a sequence of ints, got {input_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"model {name!r}: invalid input_shape {shape}")
    return shape


# --------------------------------------------------------------------------------------------------
# Option checkers and activations (used by the builders)
# --------------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def _activation(model: str, name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"model {model!r}: unknown activation {name!r}; choose one of {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


def _positive_int(model: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model {model!r}: option {option!r} must be a positive integer, got {value!r}")
    return value


def _int_list(model: str, option: str, value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"model {model!r}: option {option!r} must be a list of positive integers, got {value!r}")
    return [_positive_int(model, option, v) for v in value]


def _dropout_rate(model: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"model {model!r}: option 'dropout' must be a number in [0, 1), got {value!r}")
    return float(value)
