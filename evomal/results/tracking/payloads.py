"""What each run of the tracking holds (params, tags, metrics, artifacts, digest), from the result files.

Infinite fitness: MLflow's SQL store silently turns +inf into the largest float (1.8e308), which
ruins charts and sorting. A candidate with infinite fitness therefore has no ``fitness`` metric; its
tag ``fitness`` says ``inf`` (every candidate has that tag: the value to 4 significant digits). Other
non-finite points (a diverged curve, a NaN statistic) are left out of the metrics too; the result
files keep them.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomal.core import files
from evomal.pipeline.contract import DECISIONS, candidate_dir


#: Bump when what is logged changes: every run's digest then differs and is logged again.
TRACKING_VERSION = 2

KEY_TAG = "evomal.key"
DIGEST_TAG = "evomal.digest"
LEVEL_TAG = "evomal.level"
PIPELINE_TAG = "evomal.pipeline"
GENERATION_TAG = "evomal.generation"
RESULTS_DIR_TAG = "evomal.results_dir"
SEARCH_ID_TAG = "evomal.search_id"
RESULTS_DIGEST_TAG = "evomal.results_digest"
CONFIG_CONFLICT_TAG = "evomal.config_changed"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"  # a run's description in the UI

# MLflow's limits (mlflow.utils.validation); longer values are clipped here so that a rerun logs the
# same (clipped) param value instead of failing on the immutable param.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000


# --------------------------------------------------------------------------- small pure helpers
def _clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 14] + " ...[clipped]"


def _text(value) -> str:
    """A table cell as text: empty for missing values (pandas reads empty cells as NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _finite(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _digest(*parts: Any) -> str:
    return hashlib.sha256(files.dumps_json([TRACKING_VERSION, *parts]).encode()).hexdigest()[:20]


def _file_digest(path: Path) -> str | None:
    return files.file_digest(path) if path.exists() else None


def flatten(doc: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"search.population": "25", ...}`` (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


@dataclass
class Payload:
    """Everything logged to one run; ``metrics`` are (key, value, step), artifacts name -> Path | bytes."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    artifacts: dict[str, Path | bytes] = field(default_factory=dict)
    digest: str = ""


# --------------------------------------------------------------------------- a candidate's content
def _candidate_metrics(row: dict, frec: dict, optimized: dict | None, fit_doc: dict | None,
                       metric_name: str) -> list[tuple[str, float, int]]:
    out: list[tuple[str, float, int]] = []

    def add(key, value, step=0):
        x = _finite(value)
        if x is not None:
            out.append((key, x, int(step)))

    add("fitness", row["fitness"])
    timings = (fit_doc or {}).get("timings") or {}
    add("seconds/local_search", timings.get("local_search"))
    add("seconds/fitness", timings.get("fitness"))
    add("rejection_improvement", frec.get("rejection_improvement"))
    if optimized is not None:
        for step, value in enumerate(optimized.get("curve") or []):
            add("meta_train/val_loss", value, step)
    if fit_doc is not None:
        # (step, mean training loss since the previous point, validation metric): evomal.learning.training.train
        for step, loss, val in fit_doc.get("curve") or []:
            add("train/loss", loss, step)
            add(f"train/val_{metric_name}", val, step)
    return out


def loss_shape_png(expression: str, kind: str, weights, *, title: str = "", doc: dict | None = None) -> bytes:
    """The loss's element-wise shape with the baseline drawn in (dashed black), as in the report:
    against the predicted probability f of a class that is the true one (y = 1) and of another class
    (y = 0) for classification, against the residual at target 0 for regression. About 880 x 380 px.
    ``doc``: the loss file, for a loss of another family than the symbolic one (ML3, TaylorGLO)."""
    from evomal.results.report.shapes import expression_shapes, function_shapes, shape_png

    if doc is not None and "family" in doc:
        from evomal.losses.families import elementwise

        return shape_png(function_shapes(elementwise(doc, weights), kind), title=_clip(title, 90))
    return shape_png(expression_shapes(expression, kind, weights), title=_clip(title, 90))


# infix templates; each slot says the precedence its operand needs to go without parentheses
_INFIX = {"add": ("{0} + {1}", 1, (1, 2)), "sub": ("{0} - {1}", 1, (1, 2)), "mul": ("{0}*{1}", 2, (2, 2)),
          "aq": ("{0}/sqrt(1 + {1}^2)", 2, (2, 4)), "square": ("{0}^2", 3, (4,)), "abs": ("|{0}|", 4, (0,)),
          "log": ("log|{0}|", 4, (0,)), "sqrt": ("sqrt|{0}|", 4, (0,)), "sign": ("sign({0})", 4, (0,)),
          "tanh": ("tanh({0})", 4, (0,)), "min": ("min({0}, {1})", 4, (0, 0)), "max": ("max({0}, {1})", 4, (0, 0))}


def weighted_infix(expression: str, weights) -> str:
    """Readable infix text of the loss with its edge weights (4 significant digits; 1 left out).

    Unsimplified, so it costs microseconds where SymPy costs tens of milliseconds per candidate;
    log and sqrt are shown without their 1e-7 clamp.
    """
    from evomal.gp.expressions import parse

    weights = [float(w) for w in weights]
    counter = iter(range(-1, len(weights)))

    def walk(node) -> tuple[str, int]:  # (text, precedence: 1 sum, 2 product, 3 power, 4 atom)
        k = next(counter)
        if not node.children:
            text, prec = node.op, 1 if node.op.startswith("-") else 4
        else:
            template, prec, needs = _INFIX[node.op]
            args = [t if p >= need else f"({t})" for (t, p), need in zip((walk(c) for c in node.children), needs)]
            text = template.format(*args)
        w = weights[k] if k >= 0 else 1.0
        if w == 1.0:
            return text, prec
        return f"{w:.4g}*{text if prec >= 2 else f'({text})'}", 1 if w < 0 else 2

    return walk(parse(expression))[0]


def _formula_text(loss_doc: dict, weights, which: str) -> str:
    """Readable text of a loss file: the loss with ``weights`` (``which``: learned / initial)."""
    if "family" in loss_doc:  # ML3, TaylorGLO: not an expression with edge weights
        from evomal.losses.families import formula_text

        return (f"family: {loss_doc['family']}\nexpression: {loss_doc['expression']}\nkind: {loss_doc['kind']}\n"
                f"loss ({which} weights): {formula_text(loss_doc, weights)}\n")
    lines = [f"expression: {loss_doc['expression']}", f"kind: {loss_doc['kind']}",
             f"loss ({which} weights): {weighted_infix(loss_doc['expression'], weights)}",
             f"{which} weights: {[float(w) for w in weights]}",
             f"simplified, with the weights of loss.json: {loss_doc.get('formula', '')}",
             f"latex, with the weights of loss.json: {loss_doc.get('latex', '')}"]
    return "\n".join(lines) + "\n"


def _metric_name(kind: str | None) -> str:
    return "mse" if kind == "regression" else "error_rate"


def fitness_text(fitness: float) -> str:
    """The fitness as a column shows it: 4 significant digits (the metric ``fitness`` is exact), ``inf``."""
    return f"{fitness:.4g}" if math.isfinite(fitness) else "inf"


def candidate_run_name(cand_id: str, fitness: float, decision: str) -> str:
    """``g3-012 0.0417`` for a loss with a fitness, ``g3-013 rejected`` otherwise: the runs table
    shows run names without any column picked, so the name says how the candidate did."""
    return f"{cand_id} {fitness_text(fitness) if math.isfinite(fitness) else decision or 'inf'}"


def _candidate_paths(gen_dir: Path, cand_id: str) -> tuple[Path, Path, Path]:
    cdir = candidate_dir(gen_dir, cand_id)
    return cdir / "loss.json", cdir / "fitness.json", cdir / "optimized.pt"


def candidate_digest(row: dict, frec: dict, individual: dict, gen_dir: Path) -> str:
    """Hash of everything a candidate run shows: cheap, so an unchanged run is skipped unread."""
    return _digest(row, {k: v for k, v in frec.items() if k != "signature"}, individual,
                   [_file_digest(p) for p in _candidate_paths(gen_dir, row["id"])])


def candidate_payload(row: dict, frec: dict, individual: dict, gen_dir: Path, *, experiment: str,
                      generation: int, digest: str) -> Payload:
    """What a candidate run holds (pure apart from reading the candidate's files)."""
    loss_path, fit_path, opt_path = _candidate_paths(gen_dir, row["id"])
    loss_doc = files.read_json(loss_path) if loss_path.exists() else None
    fit_doc = files.read_json(fit_path) if fit_path.exists() else None
    optimized = files.read_tensors(opt_path) if opt_path.exists() else None
    kind = loss_doc["kind"] if loss_doc else None
    fitness = files.number(row["fitness"]) if _text(row["fitness"]) else math.inf
    p = Payload(digest=digest)
    p.params = {
        "id": row["id"], "generation": str(generation),
        "expression": _clip(row["expression"], MAX_PARAM_LENGTH),
        "key": _clip(_text(frec.get("key")) or _text(row.get("key")), MAX_PARAM_LENGTH),
        "key_method": _text(frec.get("key_method")),
        "parents": " ".join(individual.get("parents", [])) or "-",
        "origin": _text(individual.get("origin") or row.get("origin")),
    }
    p.tags = {
        RUN_NAME_TAG: candidate_run_name(row["id"], fitness, _text(row["decision"])),
        KEY_TAG: f"{experiment}/gen_{generation}/{row['id']}", LEVEL_TAG: "candidate",
        GENERATION_TAG: str(generation), "decision": _text(row["decision"]), "reason": _text(row.get("reason")),
        "reuse_of": _text(row.get("reuse_of")), "fitness": fitness_text(fitness),
    }
    if frec.get("shard") is not None:
        p.tags["shard"] = str(frec["shard"])
    if optimized is not None:
        p.tags["local_search.status"] = _text(optimized.get("status"))
        if optimized.get("reason"):
            p.tags["local_search.reason"] = _text(optimized.get("reason"))
    p.metrics = _candidate_metrics(row, frec, optimized, fit_doc, _metric_name(kind))
    if loss_doc is not None:
        learned = None
        if optimized is not None and optimized.get("weights") is not None:
            learned = [float(w) for w in optimized["weights"].reshape(-1).tolist()]
        weights = learned if learned is not None else loss_doc["weights"]
        p.artifacts = {
            "loss.json": loss_path,
            "formula.txt": _formula_text(loss_doc, weights, "initial" if learned is None else "learned").encode(),
            "loss_shape.png": loss_shape_png(loss_doc["expression"], kind, weights, title=row["expression"],
                                             doc=loss_doc),
        }
        if fit_doc is not None:
            p.artifacts["fitness.json"] = fit_path
    return p


# --------------------------------------------------------------------------- a generation's content
def read_generation(gen_dir: Path) -> tuple[list[dict], dict[str, dict], dict[str, dict]]:
    """(fitness.tsv rows, filter records by id, population individuals by id)."""
    table = files.read_tsv(gen_dir / "fitness.tsv")
    rows = [{k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in r.items()}
            for r in table.astype(object).to_dict("records")]
    for r in rows:
        r["id"] = str(r["id"])
    frecs = {str(c["id"]): c for c in files.read_json(gen_dir / "filter.json")["candidates"]}
    individuals = {str(i["id"]): i for i in files.read_json(gen_dir / "population.json")["individuals"]}
    return rows, frecs, individuals


def generation_summary(rows: list[dict], archive: dict | None) -> dict[str, float]:
    """Metrics of a generation: best and median fitness, best so far, counts per filter decision."""
    values = [files.number(r["fitness"]) if _text(r["fitness"]) else math.inf for r in rows]
    values = [v for v in values if not math.isnan(v)]
    out: dict[str, float] = {"n_individuals": float(len(rows)),
                             "n_finite": float(sum(math.isfinite(v) for v in values))}
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        out["best"] = min(finite)
    if values and math.isfinite(statistics.median(values)):
        out["median"] = statistics.median(values)
    best = (archive or {}).get("best")
    if best is not None and _finite(best.get("fitness")) is not None:
        out["best_so_far"] = float(best["fitness"])
    for d in DECISIONS:
        out[f"count/{d}"] = float(sum(r["decision"] == d for r in rows))
    return out


def stage_seconds(folder: Path) -> dict[str, float]:
    """``seconds/<stage>`` from the compute timings the stages record in ``<folder>/timings/``."""
    out = {}
    for path in sorted((folder / "timings").glob("*.json")):
        doc = files.read_json(path)
        x = _finite(doc.get("seconds"))
        if x is not None:
            out[f"seconds/{doc.get('stage', path.stem)}"] = x
    if out:
        out["seconds/total"] = sum(out.values())
    return out


def _generation_payload(rows: list[dict], archive: dict | None, gen_dir: Path, generation: int) -> Payload:
    summary = {**generation_summary(rows, archive), **stage_seconds(gen_dir)}
    ranked = sorted((files.number(r["fitness"]), r["id"]) for r in rows if _text(r["fitness"]))
    best_id = ranked[0][1] if ranked and math.isfinite(ranked[0][0]) else ""
    return Payload(params={"generation": str(generation), "population": str(len(rows))},
                   tags={"best_id": best_id},
                   metrics=[(k, v, 0) for k, v in summary.items()],
                   artifacts={"fitness.tsv": gen_dir / "fitness.tsv"},
                   digest=_digest(summary, best_id, files.file_digest(gen_dir / "fitness.tsv")))


# --------------------------------------------------------------------------- the results of an experiment
def _results_metrics(table, summary, prefix: str) -> list[tuple[str, float, int]]:
    """Per seed (step = seed) and summary metrics of meta_test.tsv / transfer.tsv."""
    out: list[tuple[str, float, int]] = []
    for r in table.to_dict("records") if table is not None else []:
        base = f"{prefix}/{r['target']}/{r['method']}"
        x = _finite(r["test_metric"])
        if x is not None:
            out.append((f"{base}/test_{r['metric']}", x, int(r["seed"])))
    if table is not None and len(table):
        for (target, method), g in table.groupby(["target", "method"], sort=False):
            out.append((f"{prefix}/{target}/{method}/diverged", float(g["diverged"].astype(str).str.lower()
                                                                      .isin(["true", "1"]).sum()), 0))
    for r in summary.to_dict("records") if summary is not None else []:
        compared = _finite(r.get("baseline_mean")) is not None  # False for the baseline's own row
        for col in ("mean", "std") + (("mean_difference", "t_statistic", "p_value", "wins", "losses")
                                      if compared else ()):
            x = _finite(r.get(col))
            if x is not None:
                out.append((f"{prefix}/{r['target']}/{r['method']}/{col}", x, 0))
    return out


def _read_optional_tsv(path: Path):
    return files.read_tsv(path) if path.exists() and path.stat().st_size else None


def _best_loss_artifacts(best_path: Path) -> dict[str, Path | bytes]:
    best = files.read_json(best_path)  # select_best stores the meta-learned weights
    return {"best/loss.json": best_path,
            "best/formula.txt": _formula_text(best, best["weights"], "learned").encode(),
            "best/loss_shape.png": loss_shape_png(best["expression"], best["kind"], best["weights"],
                                                  title=best["expression"], doc=best)}


def _best_loss_tags(best_path: Path) -> dict[str, str]:
    best = files.read_json(best_path)
    return {"best.id": _text(best.get("id")), "best.generation": _text(best.get("generation")),
            "best.fitness": _text(best.get("fitness")), "best.expression": best["expression"],
            "best.formula": best.get("formula", "")}
