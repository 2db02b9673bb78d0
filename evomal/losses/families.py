"""Loss families beyond the symbolic one (DESIGN §1.8): ML3's neural loss and TaylorGLO's polynomial.

A symbolic loss file (GP expression + edge weights) has no ``family`` field and version 1, as it always
had. A file of another family has ``"family"`` and version 2, so an evomal that predates families
refuses it by its version instead of misreading it. Every family's module is an ``nn.Module`` with the
surface of :class:`evomal.losses.modules.CompiledLoss`, so training, the local search, meta-testing
and the reports treat all families alike:

* ``kind``: "classification" or "regression";
* ``weights``: all of the loss's parameters as one 1-d ``nn.Parameter`` (network weights, Taylor θ);
* ``compiled(w, y, f)``: the element-wise loss for parameters ``w``, differentiable in all three;
* ``forward(output, target)``: the batch loss (DESIGN §1.1: softmax / one-hot for classification,
  summed over classes and averaged over the batch); ``info``: the loss file's extra fields.

A family module (``evomal.losses.<module>``) provides ``FAMILY``, ``document(kind, weights, **extra)``,
``from_document(doc, source, trainable)``, ``torch_source(doc, meta)`` and ``formula_text(weights)``.
"""
from __future__ import annotations

import importlib
import json
import math
import os
from types import ModuleType
from typing import Callable, Sequence

from torch import Tensor

from evomal.core.files import atomic_write_bytes
from evomal.losses.codegen import check_kind
from evomal.losses.lossfile import FILE_FORMAT, _json_safe

#: version of the files of a family other than the symbolic one
FAMILY_VERSION = 2
SYMBOLIC = "symbolic"
#: family name -> module; imported on first use (``load_loss`` of a symbolic file imports neither)
_FAMILIES = {"ml3": "evomal.losses.neural", "taylor": "evomal.losses.taylor"}
_RESERVED = ("format", "version", "family", "kind", "expression", "weights", "formula", "latex")


def list_families() -> list[str]:
    return [SYMBOLIC, *sorted(_FAMILIES)]


def family_of(doc: dict) -> str:
    """The family of a loss document; files without the field are symbolic."""
    return doc.get("family", SYMBOLIC)


def family_module(name: str) -> ModuleType:
    """The module of a (non-symbolic) family; an unknown name fails listing the known ones."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown loss family {name!r}; known families: {', '.join(list_families())}")
    return importlib.import_module(_FAMILIES[name])


def as_floats(weights: Tensor | Sequence[float], what: str) -> list[float]:
    values = [float(w) for w in (weights.detach().cpu().reshape(-1).tolist() if isinstance(weights, Tensor)
                                 else weights)]
    if not all(math.isfinite(w) for w in values):
        raise ValueError(f"{what}: cannot save non-finite weights")
    return values


def family_document(family: str, kind: str, weights: Tensor | Sequence[float], *, expression: str,
                    formula: str, latex: str = "", fields: dict | None = None, extra: dict | None = None) -> dict:
    """The JSON content of a loss file of ``family``: its own ``fields``, then the caller's ``extra``."""
    check_kind(kind)
    fields = fields or {}
    extra = extra or {}
    clash = sorted(set(extra) & (set(_RESERVED) | set(fields)))
    if clash:
        raise ValueError(f"extra fields {clash} would overwrite the loss file's own fields")
    doc = {"format": FILE_FORMAT, "version": FAMILY_VERSION, "family": family, "kind": kind,
           "expression": expression, **fields, "weights": as_floats(weights, f"{family} loss"),
           "formula": formula, "latex": latex}
    doc.update(_json_safe(extra))
    return doc


def write_document(path: str | os.PathLike, doc: dict) -> dict:
    """Write a loss document atomically, formatted as ``save_loss`` formats symbolic ones."""
    atomic_write_bytes(path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    return doc


def check_family_document(doc: dict, source) -> tuple[ModuleType, str, list[float]]:
    """(family module, kind, weights) of a family loss document; errors name ``source``."""
    if doc.get("version") != FAMILY_VERSION:
        raise ValueError(f"{source}: loss file version {doc.get('version')!r}; files of the "
                         f"{doc.get('family')!r} family are version {FAMILY_VERSION}")
    module = family_module(doc["family"])
    try:
        kind = check_kind(doc["kind"])
        weights = [float(w) for w in doc["weights"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: damaged loss file ({type(exc).__name__}: {exc})") from None
    return module, kind, weights


def load_family_loss(doc: dict, source, *, trainable: bool = False):
    """The loss module of a family loss document (``load_loss`` dispatches here)."""
    module, _, _ = check_family_document(doc, source)
    loss = module.from_document(doc, source=source, trainable=trainable)
    loss.info = {k: v for k, v in doc.items() if k not in _RESERVED and k not in module.FIELDS}
    return loss


def elementwise(doc: dict, weights: Sequence[float] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """(y, f) -> element-wise values of a family loss document, with its own or the given weights."""
    import torch

    loss = load_family_loss(doc, "<loss document>")
    w = torch.tensor(doc["weights"] if weights is None else [float(v) for v in weights], dtype=torch.float64)
    return lambda y, f: loss.compiled(w.to(f.device), y, f)


def formula_text(doc: dict, weights: Sequence[float] | None = None) -> str:
    """A readable one-line form of a family loss with its own or the given weights."""
    module, _, own = check_family_document(doc, "<loss document>")
    return module.formula_text(own if weights is None else [float(w) for w in weights], doc)
