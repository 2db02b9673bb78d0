"""Deterministic, RNG-isolated (re-)initialisation of a network's parameters: ``reinitialize``."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["reinitialize"]

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
