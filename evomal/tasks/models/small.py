"""Small networks: ``linear``, ``mlp``, ``lenet5`` and ``cnn`` (images ``(C, H, W)`` or 1-D signals)."""

from __future__ import annotations

import math

from torch import nn

from evomal.tasks.models.layers import Network, _conv_out, _spatial_input
from evomal.tasks.models.registry import _activation, _int_list, _positive_int, register_model


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
