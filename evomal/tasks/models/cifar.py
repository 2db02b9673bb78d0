"""The paper's CIFAR networks with BatchNorm: ``allcnnc``, ``vgg16``, ``resnet18``, ``wideresnet``."""

from __future__ import annotations

import torch
from torch import nn

from evomal.tasks.models.layers import Network, _conv_out, _spatial_input
from evomal.tasks.models.registry import _dropout_rate, _positive_int, register_model

__all__ = ["BasicBlock", "WideBlock"]

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
