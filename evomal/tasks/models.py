"""Registry of base networks, with deterministic, RNG-isolated initialisation.

``build_model(name, input_shape, num_outputs, seed=...)`` constructs a network for inputs of shape
``(N, *input_shape)`` and draws its parameters from a private ``torch.Generator`` seeded with
``seed``: the caller's global RNG state is never read or advanced. ``reinitialize(model, seed)``
re-draws every parameter (and resets BatchNorm statistics) in place and gives exactly the
parameters ``build_model(..., seed=seed)`` gives, which lets the meta-learner reuse one module
across meta steps.

Every network is a plain ``nn.Module`` without in-place tricks on its parameters, so it works under
``torch.func.functional_call(model, (params, buffers), x)`` (BatchNorm buffers included).

Image networks (``lenet5``, ``cnn``, ``allcnnc``, ``vgg16``, ``resnet18``, ``wideresnet``) want
``(C, H, W)`` inputs (``cnn`` also ``(C, L)`` signals); flat inputs ``(d,)`` are accepted only with
an explicit ``image_shape`` option (e.g. ``image_shape=[1, 8, 8]`` for scikit-learn digits).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["build_model", "list_models", "reinitialize", "register_model", "model_options"]


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

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
# Initialisation
# --------------------------------------------------------------------------------------------------

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def reinitialize(model: nn.Module, seed: int) -> None:
    """Re-draw all parameters of ``model`` in place from ``seed`` and reset normalisation buffers.

    Linear and convolution layers follow PyTorch's default scheme (Kaiming-uniform weights with
    ``a = sqrt(5)``, uniform biases in ``+-1/sqrt(fan_in)``), normalisation layers get weight 1,
    bias 0 and fresh running statistics. Numbers come from a private CPU ``torch.Generator``, so the
    result is the same on every device and the global RNG is not touched. Modules of other types
    that own parameters are reset with their own ``reset_parameters`` under a forked RNG seeded from
    the same generator.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed % (1 << 63))
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            weight = module.weight
            fan_in = weight[0].numel() if weight.dim() > 1 else weight.numel()
            bound = math.sqrt(6.0 / ((1 + 5.0) * fan_in))  # kaiming_uniform_ with a = sqrt(5)
            _uniform(weight, bound, gen)
            if module.bias is not None:
                _uniform(module.bias, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0, gen)
        elif isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if getattr(module, "track_running_stats", False) and module.running_mean is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.num_batches_tracked.zero_()
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            if not hasattr(module, "reset_parameters"):
                raise TypeError(
                    f"cannot re-initialise {type(module).__name__}: it owns parameters or buffers but has no "
                    "reset_parameters()"
                )
            sub_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            devices = [p.device for p in module.parameters(recurse=False) if p.device.type == "cuda"]
            with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
                torch.manual_seed(sub_seed)
                module.reset_parameters()


def _uniform(t: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    if t.device.type == "cpu":
        t.uniform_(-bound, bound, generator=gen)
    else:
        tmp = torch.empty(t.shape, dtype=t.dtype).uniform_(-bound, bound, generator=gen)
        t.copy_(tmp, non_blocking=False)


# --------------------------------------------------------------------------------------------------
# Building blocks
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


# --------------------------------------------------------------------------------------------------
# Fully connected models
# --------------------------------------------------------------------------------------------------


@register_model("linear")
def _linear(input_shape, num_outputs):
    return Network(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))


@register_model("mlp")
def _mlp(input_shape, num_outputs, *, hidden=(1000, 1000), activation="relu"):
    widths = _int_list("mlp", "hidden", hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for width in widths:
        layers += [nn.Linear(fan_in, width), _activation("mlp", activation)]
        fan_in = width
    return Network(nn.Sequential(*layers), nn.Linear(fan_in, num_outputs))


# --------------------------------------------------------------------------------------------------
# Small convolutional models
# --------------------------------------------------------------------------------------------------


@register_model("lenet5")
def _lenet5(input_shape, num_outputs, *, activation="relu", image_shape=None):
    """LeNet-5: conv5x5(6) - pool - conv5x5(16) - pool - 120 - 84 - out.

    32x32 inputs use unpadded convolutions (the original); smaller inputs are zero-padded by 2 in
    the first convolution (28x28 behaves like 32x32), and in the second when the map would shrink
    below 2x2 (8x8 digits: 8 -> 4 -> 4 -> 2).
    """
    (c, h, w), pre = _spatial_input("lenet5", input_shape, image_shape)
    pad1 = 2 if min(h, w) < 32 else 0
    h1, w1 = _conv_out(h, 5, 1, pad1) // 2, _conv_out(w, 5, 1, pad1) // 2
    pad2 = 0 if min(h1, w1) >= 10 else 2
    h2, w2 = _conv_out(h1, 5, 1, pad2) // 2, _conv_out(w1, 5, 1, pad2) // 2
    if min(h1, w1, h2, w2) < 1:
        raise ValueError(f"model 'lenet5': input {(c, h, w)} is too small (needs at least 4x4 pixels)")
    act = lambda: _activation("lenet5", activation)  # noqa: E731
    features = nn.Sequential(
        *pre,
        nn.Conv2d(c, 6, 5, padding=pad1),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h2 * w2, 120),
        act(),
        nn.Linear(120, 84),
        act(),
    )
    return Network(features, nn.Linear(84, num_outputs))


@register_model("cnn")
def _cnn(input_shape, num_outputs, *, channels=(32, 64), hidden=128, activation="relu", image_shape=None):
    """Two conv3x3 (same padding) + max-pool stages, one hidden dense layer.

    Works on images ``(C, H, W)`` (28x28, 32x32, 8x8, ...) and on 1-D signals ``(C, L)``
    (e.g. MNIST-1D with ``image_shape=[1, 40]``). Pooling is skipped once a map is 1 wide.
    """
    chans = _int_list("cnn", "channels", channels)
    if not chans:
        raise ValueError("model 'cnn': option 'channels' needs at least one entry")
    hidden = _positive_int("cnn", "hidden", hidden)
    shape, pre = _spatial_input("cnn", input_shape, image_shape, dims=(3, 2))
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(shape) == 3 else (nn.Conv1d, nn.MaxPool1d)
    in_c, spatial = shape[0], list(shape[1:])
    layers: list[nn.Module] = list(pre)
    for out_c in chans:
        layers += [conv(in_c, out_c, 3, padding=1), _activation("cnn", activation)]
        if min(spatial) >= 2:
            layers.append(pool(2))
            spatial = [s // 2 for s in spatial]
        in_c = out_c
    layers += [nn.Flatten(), nn.Linear(in_c * math.prod(spatial), hidden), _activation("cnn", activation)]
    return Network(nn.Sequential(*layers), nn.Linear(hidden, num_outputs))


# --------------------------------------------------------------------------------------------------
# The paper's CIFAR networks (BatchNorm)
# --------------------------------------------------------------------------------------------------


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def _maybe_dropout(rate: float) -> list[nn.Module]:
    # dropout draws from torch's global RNG; it is off by default so training stays RNG-isolated
    return [nn.Dropout(rate)] if rate > 0 else []


@register_model("allcnnc")
def _allcnnc(input_shape, num_outputs, *, width=96, dropout=0.0, image_shape=None):
    """All-CNN-C (Springenberg et al. 2015) with BatchNorm: strided convolutions instead of pooling,
    a 1x1 convolution as classifier and global average pooling. ``width`` is the first stage's
    channel count (96); the second stage has twice as many."""
    (c, h, w), pre = _spatial_input("allcnnc", input_shape, image_shape)
    w1 = _positive_int("allcnnc", "width", width)
    w2 = 2 * w1
    rate = _dropout_rate("allcnnc", dropout)
    size = min(_conv_out(_conv_out(n, 3, 2, 1), 3, 2, 1) for n in (h, w))
    pad = 0 if size >= 3 else 1  # the "valid" 3x3 convolution, padded on tiny inputs
    features = nn.Sequential(
        *pre,
        *_conv_bn_relu(c, w1, 3, 1, 1),
        *_conv_bn_relu(w1, w1, 3, 1, 1),
        *_conv_bn_relu(w1, w1, 3, 2, 1),
        *_maybe_dropout(rate),
        *_conv_bn_relu(w1, w2, 3, 1, 1),
        *_conv_bn_relu(w2, w2, 3, 1, 1),
        *_conv_bn_relu(w2, w2, 3, 2, 1),
        *_maybe_dropout(rate),
        *_conv_bn_relu(w2, w2, 3, 1, pad),
        *_conv_bn_relu(w2, w2, 1),
        nn.Conv2d(w2, num_outputs, 1),
        nn.AdaptiveAvgPool2d(1),
    )
    return Network(features, nn.Flatten())


@register_model("vgg16")
def _vgg16(input_shape, num_outputs, *, width=64, image_shape=None):
    """VGG-16 with BatchNorm for small images: 13 conv3x3 layers in five stages of
    width x (1, 2, 4, 8, 8), max-pooling between stages while the map is at least 2 wide, global
    average pooling and one linear classifier."""
    (c, h, w), pre = _spatial_input("vgg16", input_shape, image_shape)
    base = _positive_int("vgg16", "width", width)
    stages = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))
    layers: list[nn.Module] = list(pre)
    in_c, size = c, min(h, w)
    for mult, repeats in stages:
        for _ in range(repeats):
            layers += _conv_bn_relu(in_c, base * mult, 3, 1, 1)
            in_c = base * mult
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Network(nn.Sequential(*layers), nn.Linear(in_c, num_outputs))


class BasicBlock(nn.Module):
    """ResNet basic block: two conv3x3-BN, identity or 1x1-conv-BN shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register_model("resnet18")
def _resnet18(input_shape, num_outputs, *, width=64, image_shape=None):
    """ResNet-18, CIFAR variant (He et al. 2016): conv3x3 stem without max-pool, four stages of two
    basic blocks with width x (1, 2, 4, 8) channels, strides (1, 2, 2, 2), global average pooling."""
    (c, _, _), pre = _spatial_input("resnet18", input_shape, image_shape)
    base = _positive_int("resnet18", "width", width)
    layers: list[nn.Module] = [*pre, *_conv_bn_relu(c, base, 3, 1, 1)]
    in_c = base
    for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
        layers += [BasicBlock(in_c, base * mult, stride), BasicBlock(base * mult, base * mult, 1)]
        in_c = base * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Network(nn.Sequential(*layers), nn.Linear(in_c, num_outputs))


class WideBlock(nn.Module):
    """Pre-activation wide residual block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if (stride != 1 or c_in != c_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


@register_model("wideresnet")
def _wideresnet(input_shape, num_outputs, *, depth=28, widen_factor=10, dropout=0.0, image_shape=None):
    """Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016): (depth - 4) / 6 pre-activation blocks
    in each of three groups of 16k, 32k, 64k channels (strides 1, 2, 2)."""
    (c, _, _), pre = _spatial_input("wideresnet", input_shape, image_shape)
    depth = _positive_int("wideresnet", "depth", depth)
    k = _positive_int("wideresnet", "widen_factor", widen_factor)
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"model 'wideresnet': depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    rate = _dropout_rate("wideresnet", dropout)
    n = (depth - 4) // 6
    layers: list[nn.Module] = [*pre, nn.Conv2d(c, 16, 3, 1, 1, bias=False)]
    in_c = 16
    for width, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        for i in range(n):
            layers.append(WideBlock(in_c, width, stride if i == 0 else 1, rate))
            in_c = width
    layers += [nn.BatchNorm2d(in_c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Network(nn.Sequential(*layers), nn.Linear(in_c, num_outputs))
