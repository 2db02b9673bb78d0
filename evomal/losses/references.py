"""Stronger reference losses for the meta-test and transfer tables (DESIGN §1.8), by name.

A learned loss that only beats plain cross-entropy may merely be smoothing labels; the tables therefore
also carry label-smoothed cross-entropy (classification) and the Huber loss (regression), trained with
the same seeds and settings. A reference applies to one task kind; the others are skipped for a task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # names are listed for config validation without importing torch
    from torch import Tensor


@dataclass(frozen=True)
class Reference:
    name: str
    kind: str
    description: str
    fn: "Callable[[Tensor, Tensor], Tensor]"


def _label_smoothing(output: Tensor, target: Tensor) -> Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(output, target, label_smoothing=0.1)


def _huber(output: Tensor, target: Tensor) -> Tensor:
    import torch.nn.functional as F

    return F.huber_loss(output, target.reshape(output.shape).to(output.dtype), delta=1.0)


REFERENCES = {
    "label_smoothing": Reference("label_smoothing", "classification", "cross-entropy with label smoothing 0.1",
                                 _label_smoothing),
    "huber": Reference("huber", "regression", "Huber loss (delta 1)", _huber),
}


def check_references(names) -> list[str]:
    """Names that are not references (for config validation)."""
    return [n for n in names if n not in REFERENCES]


def reference_losses(names, kind: str) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """name -> loss for the references among ``names`` that apply to a task of ``kind``."""
    unknown = check_references(names)
    if unknown:
        raise KeyError(f"unknown reference losses {unknown}; known: {', '.join(REFERENCES)}")
    return {n: REFERENCES[n].fn for n in names if REFERENCES[n].kind == kind}
