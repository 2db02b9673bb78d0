"""Devices and seeded random number generators, with no global state.

Every random draw in the engine comes from a ``torch.Generator`` made here from an explicit seed, so two
stages running in one process (Snakemake threads) never disturb each other and a result depends only
on its seeds, not on what ran before it.
"""
from __future__ import annotations

import hashlib
import re

import torch

_CUDA_SPEC = re.compile(r"cuda(?::(\d+))?")


def resolve_device(spec: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises ValueError naming the value for anything else, or when CUDA (or device N) is not available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {spec!r}")
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA_SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine "
                         f"(torch {torch.__version__}); use 'cpu' or 'auto'")
    if match.group(1) is None:
        return torch.device("cuda")
    index = int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {spec!r} requested but only {count} CUDA device(s) exist")
    return torch.device("cuda", index)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (ints, strings), stable across processes and Python versions.

    Used to give each purpose its own independent stream, e.g. ``derive_seed(seed, "init", step)``.
    """
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (reduced to 63 bits)."""
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) & ((1 << 63) - 1))
    return gen


def generator_for(device: str | torch.device, *parts: object) -> torch.Generator:
    """Shorthand for ``make_generator(derive_seed(*parts), device)``."""
    return make_generator(derive_seed(*parts), device)
