"""Export a learned loss (best/loss.json) as a standalone PyTorch source file that needs only torch.

The generated file bakes the meta-learned edge weights in as constants and evaluates the expression as
straight-line code built from the primitives' code templates (evomal.gp.primitives), so its values and
gradients equal those of the compiled module (evomal.losses.modules.CompiledLoss) with the same weights.
It offers ``elementwise(y, f, w)``, ``loss(output, target)`` and an ``nn.Module`` class ``LearnedLoss``.
Losses of the other families (ML3's network, TaylorGLO's polynomial) export through ``family_source``
with the same interface.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from evomal.core import files
from evomal.gp.expressions import ExpressionError, Node, from_json, parse
from evomal.gp.primitives import CONSTANTS, PRIMITIVES, VARIABLES

KINDS = ("classification", "regression")


def read_loss_doc(path: str | os.PathLike) -> tuple[dict, Node, str, list[float]]:
    """(document, tree, kind, weights) of a loss.json, checked; errors name the file."""
    doc = files.read_json(path)
    try:
        tree = from_json(doc["tree"]) if "tree" in doc else parse(doc["expression"])
        kind = doc["kind"]
        weights = [float(w) for w in doc["weights"]]
    except (KeyError, TypeError, ValueError, ExpressionError) as exc:
        raise files.ResultFileError(f"corrupted results file {path}: not a loss file "
                                    f"({type(exc).__name__}: {exc})") from None
    if kind not in KINDS:
        raise files.ResultFileError(f"corrupted results file {path}: kind must be one of {KINDS}, got {kind!r}")
    if len(weights) != tree.num_edges:
        raise files.ResultFileError(f"corrupted results file {path}: {len(weights)} weights for an expression "
                                    f"with {tree.num_edges} edges")
    return doc, tree, kind, weights


def elementwise_lines(tree: Node) -> list[str]:
    """Straight-line statements computing the weighted expression into ``n0``.

    Node k (preorder) is assigned to ``n<k>``; for k >= 1 its value is scaled by ``w<k-1>``, the weight
    of its edge to the parent (DESIGN §1.3). Arguments are always plain names, so the templates need
    no extra parentheses.
    """
    lines: list[str] = []
    counter = iter(range(tree.size))

    def visit(node: Node) -> str:
        k = next(counter)  # taken before the children: preorder numbering
        args = [visit(c) for c in node.children]
        if node.op in VARIABLES:
            value = node.op
        elif node.op in CONSTANTS:
            value = repr(CONSTANTS[node.op])
        else:
            value = PRIMITIVES[node.op].code.format(*args)
            value = value if k == 0 else f"({value})"
        lines.append(f"n{k} = {value}" if k == 0 else f"n{k} = w{k - 1} * {value}")
        return f"n{k}"

    visit(tree)
    return lines


def _comment(text: str) -> str:
    return " ".join(str(text).split())  # one line, whatever the field holds


def _reduction_lines(kind: str) -> list[str]:
    if kind == "classification":
        prep = [
            "    # f: softmax of the logits, y: one-hot targets; summed over classes, averaged over the batch",
            "    f = torch.softmax(output, dim=1)",
            "    y = torch.zeros_like(f).scatter_(1, target.long().reshape(-1, 1), 1.0)",
            "    denom = f.shape[0]",
        ]
    else:
        prep = [
            "    # raw outputs and targets of the same shape, averaged over all elements",
            "    f = output",
            "    y = target.reshape(output.shape).to(output.dtype)",
            "    denom = f.numel()",
        ]
    return prep + [
        "    values = elementwise(y, f, weights)",
        "    if values.shape != f.shape:  # e.g. a term without y or f: broadcast to the batch",
        "        values = values.expand(f.shape)",
        "    return values.sum() * (1.0 / denom)",
    ]


def torch_source(tree: Node, kind: str, weights: list[float], *, meta: dict | None = None) -> str:
    """Source text of the standalone module (deterministic: no time stamps, same input -> same bytes)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if len(weights) != tree.num_edges:
        raise ValueError(f"{len(weights)} weights for an expression with {tree.num_edges} edges")
    meta = meta or {}
    names = [f"w{i}" for i in range(len(weights))]
    usage = _usage(kind)
    head = [
        '"""Learned loss function exported by EvoMAL (meta-learned symbolic loss); needs only PyTorch.',
        "",
        f"Kind: {kind}; inputs: {usage}.",
        "Use ``loss(output, target)`` like a torch.nn.functional loss, or ``LearnedLoss()`` as a module",
        "(``LearnedLoss(trainable=True)`` makes the edge weights trainable parameters).",
        '"""',
    ]
    info = [f"# {key}: {_comment(meta[key])}" for key in
            ("source", "experiment", "method", "id", "generation", "fitness", "formula") if meta.get(key) is not None]
    body = [
        "import torch",
        "",
        f"KIND = {json.dumps(kind)}",
        f"EXPRESSION = {json.dumps(str(tree))}",
        "# meta-learned edge weights: one per non-root node of EXPRESSION, in preorder; node k's value is",
        "# multiplied by WEIGHTS[k - 1] before its parent's operation is applied",
        "WEIGHTS = (",
        *("    " + " ".join(f"{w!r}," for w in weights[i:i + 4]) for i in range(0, len(weights), 4)),
        ")",
        "",
        "",
        "def elementwise(y, f, weights):",
        '    """The expression applied element-wise: y target, f prediction, weights a 1-d tensor."""',
        f"    ({', '.join(names)},) = weights.unbind()",
        *(f"    {line}" for line in elementwise_lines(tree)),
        "    return n0",
        "",
        "",
        *_module_tail(kind),
    ]
    return "\n".join(head + ([""] + info if info else []) + [""] + body) + "\n"


def _module_tail(kind: str, dtype: str = "torch.get_default_dtype()") -> list[str]:
    """``_reduce``, ``loss`` and ``LearnedLoss`` (its weights of ``dtype``) around the module's
    ``elementwise(y, f, weights)``."""
    return [
        "def _reduce(output, target, weights):",
        *_reduction_lines(kind),
        "",
        "",
        "def loss(output, target):",
        '    """The learned loss of a batch, with the baked-in weights."""',
        "    return _reduce(output, target, torch.tensor(WEIGHTS, dtype=output.dtype, device=output.device))",
        "",
        "",
        "class LearnedLoss(torch.nn.Module):",
        '    """The learned loss as a module; weights are a buffer, or parameters when ``trainable``."""',
        "",
        "    def __init__(self, trainable=False):",
        "        super().__init__()",
        f"        weights = torch.tensor(WEIGHTS, dtype={dtype})",
        "        if trainable:",
        "            self.weights = torch.nn.Parameter(weights)",
        "        else:",
        '            self.register_buffer("weights", weights)',
        "",
        "    def forward(self, output, target):",
        "        return _reduce(output, target, self.weights.to(output.dtype))",
    ]


def _usage(kind: str) -> str:
    return ("logits (N, C) and integer class indices (N,)" if kind == "classification"
            else "predictions and targets of the same shape, e.g. (N, 1)")


def family_source(doc: dict, body: list[str], *, title: str, weights_doc: str, meta: dict | None = None) -> str:
    """Standalone source of a loss of another family (evomal.losses.families): ``body`` defines
    ``WEIGHTS`` and ``elementwise(y, f, weights)``; the batch reduction and ``LearnedLoss`` are the
    symbolic export's. Deterministic: the same document gives the same bytes."""
    kind = doc["kind"]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    meta = meta or {}
    head = [
        f'"""{title}; needs only PyTorch.',
        "",
        f"Kind: {kind}; inputs: {_usage(kind)}.",
        "Use ``loss(output, target)`` like a torch.nn.functional loss, or ``LearnedLoss()`` as a module",
        f"(``LearnedLoss(trainable=True)`` makes {weights_doc} trainable parameters).",
        '"""',
    ]
    info = [f"# {key}: {_comment(meta[key])}" for key in
            ("source", "experiment", "method", "id", "generation", "fitness", "formula") if meta.get(key) is not None]
    lines = ["import torch", "", f"KIND = {json.dumps(kind)}", f"FAMILY = {json.dumps(doc['family'])}",
             f"EXPRESSION = {json.dumps(str(doc['expression']))}", *body, "", "",
             # float64 weights as the files hold them; the batch loss casts them to the outputs' dtype
             *_module_tail(kind, "torch.float64")]
    return "\n".join(head + ([""] + info if info else []) + [""] + lines) + "\n"


def export_torch_source(loss_json_path: str | os.PathLike) -> str:
    """Standalone PyTorch source of the loss stored at ``loss_json_path`` (see the module docstring).

    A loss of another family (a ``family`` field: ML3, TaylorGLO) is exported by its family's module.
    """
    raw = files.read_json(loss_json_path)
    family = raw.get("family") if isinstance(raw, dict) else None
    if family is None:
        doc, tree, kind, weights = read_loss_doc(loss_json_path)
    else:
        from evomal.losses.families import check_family_document

        try:
            module, _, _ = check_family_document(raw, loss_json_path)
        except ValueError as exc:
            raise files.ResultFileError(f"corrupted results file {loss_json_path}: {exc}") from None
        doc = raw
    meta = {key: doc.get(key) for key in ("experiment", "method", "id", "generation", "fitness")}
    meta["formula"] = doc.get("formula")
    meta["source"] = Path(loss_json_path).as_posix()
    if family is not None:
        return module.torch_source(doc, meta=meta)
    return torch_source(tree, kind, weights, meta=meta)


def write_torch_source(loss_json_path: str | os.PathLike, out_path: str | os.PathLike, *,
                       log: str | None = None) -> str:
    """Export and write atomically; the text is compiled first so a broken file is never written."""
    import time

    from evomal.core.joblog import JobLog

    t0 = time.perf_counter()
    source = export_torch_source(loss_json_path)
    compile(source, str(out_path), "exec")
    files.atomic_write_bytes(out_path, source.encode())
    JobLog(log)(f"exported {loss_json_path} -> {out_path}")
    files.record_seconds(out_path, "export_loss", time.perf_counter() - t0)
    return source
