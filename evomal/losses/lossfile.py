"""Loss files (``loss.json``, ``best/loss.json``): writing, reading, and the readable formula."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from evomal.core.files import atomic_write_bytes
from evomal.gp.expressions import Node, from_json, to_json
from evomal.gp.primitives import CONSTANTS
from evomal.losses.codegen import check_kind
from evomal.losses.modules import CompiledLoss

FILE_FORMAT = "evomal-loss"
FILE_VERSION = 1


def weighted_sympy(tree: Node, weights: Sequence[float], *, exact: bool = False):
    """SymPy expression with each edge weight multiplied in (unprotected log/sqrt unless ``exact``)."""
    import sympy as sp

    from evomal.gp.primitives import sympy_function

    symbols = {"y": sp.Symbol("y", real=True), "f": sp.Symbol("f", real=True)}
    counter = iter(range(-1, tree.num_edges))

    def walk(node: Node):
        k = next(counter)
        if node.op in symbols:
            expr = symbols[node.op]
        elif node.op in CONSTANTS:
            expr = sp.Integer(int(CONSTANTS[node.op]))
        else:
            expr = sympy_function(node.op, exact)(*(walk(c) for c in node.children))
        return expr if k < 0 else sp.Float(weights[k]) * expr

    return walk(tree)


def readable_formula(tree: Node, weights: Sequence[float], digits: int = 4) -> tuple[str, str]:
    """(text, LaTeX) of the loss with its weights folded in, numbers rounded to ``digits`` significant.

    log and sqrt are shown without their 1e-7 clamp, for readability.
    """
    import sympy as sp

    expr = weighted_sympy(tree, weights)
    expr = expr.xreplace({a: sp.Float(float(a), digits) for a in expr.atoms(sp.Float)})
    return sp.sstr(expr), sp.latex(expr)


def _json_safe(obj):
    """Extras may carry inf/nan (a fitness); JSON has no such numbers, so they are stored as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return _json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


_RESERVED = ("format", "version", "expression", "tree", "kind", "num_edges", "weights", "formula", "latex")


def loss_document(tree: Node, kind: str, weights: Tensor | Sequence[float], **extra) -> dict:
    """The JSON content of a loss file."""
    check_kind(kind)
    values = [float(w) for w in (weights.detach().cpu().tolist() if isinstance(weights, Tensor) else weights)]
    if len(values) != tree.num_edges:
        raise ValueError(f"{tree}: has {tree.num_edges} edges but {len(values)} weights were given")
    if not all(math.isfinite(w) for w in values):
        raise ValueError(f"{tree}: cannot save non-finite weights {values}")
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra fields {clash} would overwrite the loss file's own fields")
    formula, latex = readable_formula(tree, values)
    doc = {"format": FILE_FORMAT, "version": FILE_VERSION, "expression": str(tree), "tree": to_json(tree),
           "kind": kind, "num_edges": tree.num_edges, "weights": values, "formula": formula, "latex": latex}
    doc.update(_json_safe(extra))
    return doc


def save_loss(path: str | os.PathLike, tree: Node, kind: str, weights: Tensor | Sequence[float], **extra) -> dict:
    """Write a loss file (JSON, atomically) and return its content. ``extra`` fields are stored as given."""
    doc = loss_document(tree, kind, weights, **extra)
    atomic_write_bytes(path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    return doc


def load_loss(path: str | os.PathLike, *, trainable: bool = False,
              device: str | torch.device | None = None) -> CompiledLoss:
    """Read a loss file (e.g. ``best/loss.json``) into a :class:`CompiledLoss` for any training loop.

    The weights do not require grad unless ``trainable``; ``loss.frozen()`` is the fastest form for
    training a network with it. Raises ValueError naming the file when it is not a valid loss file.
    A file with a ``family`` field (ML3, TaylorGLO) gives that family's module instead, with the same
    surface (``kind``, ``weights``, ``compiled``, ``info``; see evomal.losses.families).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a loss file (invalid JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a loss file (no 'format': {FILE_FORMAT!r})")
    if "family" in doc:
        from evomal.losses.families import load_family_loss

        loss = load_family_loss(doc, path, trainable=trainable)
        return loss if device is None else loss.to(device)
    if doc.get("version") != FILE_VERSION:
        raise ValueError(f"{path}: loss file version {doc.get('version')!r}, this evomal reads {FILE_VERSION}")
    try:
        tree = from_json(doc["tree"])
        weights = [float(w) for w in doc["weights"]]
        kind = check_kind(doc["kind"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: damaged loss file ({type(exc).__name__}: {exc})") from None
    if str(tree) != doc.get("expression"):
        raise ValueError(f"{path}: 'tree' ({tree}) and 'expression' ({doc.get('expression')}) disagree")
    loss = CompiledLoss(tree, kind, torch.tensor(weights, dtype=torch.float32), trainable=trainable)
    loss.info = {k: v for k, v in doc.items() if k not in _RESERVED}
    return loss if device is None else loss.to(device)
