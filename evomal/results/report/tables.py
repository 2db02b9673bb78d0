"""Tables of an experiment's results: reading the result files, fitness, filter decisions and savings,
the method comparison, and Markdown / plain-text rendering. Pure functions of the files (no plotting).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from evomal.core import files
from evomal.pipeline.contract import DECISIONS


DECISION_LABELS = {"evaluate": "evaluated", "equivalent": "equivalent", "rejected": "rejected",
                   "gradient_equivalent": "gradient-equivalent", "invalid": "invalid"}


# =========================================================================== reading result files
def generation_tables(exp_dir: str | os.PathLike) -> list[Path]:
    """``gen_<g>/fitness.tsv`` of the generations finished so far, in generation order."""
    found = []
    for path in Path(exp_dir).glob("gen_*/fitness.tsv"):
        m = re.fullmatch(r"gen_(\d+)", path.parent.name)
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def read_generations(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All candidates of the given fitness tables with a ``generation`` column (from ``gen_<g>``)."""
    frames = []
    for path in paths:
        path = Path(path)
        m = re.fullmatch(r"gen_(\d+)", path.parent.name)
        if not m:
            raise ValueError(f"{path}: a fitness table must lie in a gen_<g> folder")
        frame = files.read_tsv(path)
        missing = {"id", "decision", "fitness"} - set(frame.columns)
        if missing:
            raise files.ResultFileError(f"corrupted results file {path}: missing columns {sorted(missing)}")
        frames.append(frame.assign(generation=int(m.group(1))))
    if not frames:
        return pd.DataFrame(columns=["generation", "id", "expression", "decision", "fitness"])
    table = pd.concat(frames, ignore_index=True)
    table["fitness"] = pd.to_numeric(table["fitness"], errors="coerce").astype(float)
    return table


def fitness_by_generation(table: pd.DataFrame) -> pd.DataFrame:
    """Per generation: best and median of the finite fitnesses, their count, and the best so far.

    Rejected, invalid and failed candidates have fitness inf; they are left out (not a number to plot).
    A generation without any finite fitness gets NaN.
    """
    gens = sorted(table["generation"].unique()) if len(table) else []
    rows = []
    for g in gens:
        fit = table.loc[table["generation"] == g, "fitness"].to_numpy(float)
        fit = fit[np.isfinite(fit)]
        rows.append({"generation": int(g), "best": float(fit.min()) if fit.size else math.nan,
                     "median": float(np.median(fit)) if fit.size else math.nan, "finite": int(fit.size),
                     "candidates": int((table["generation"] == g).sum())})
    frame = pd.DataFrame(rows, columns=["generation", "best", "median", "finite", "candidates"])
    frame["best_so_far"] = frame["best"].cummin().ffill()  # a generation without finite fitness keeps the best
    return frame


def decision_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Candidates per generation (rows) and filter decision (columns, all of DECISIONS)."""
    unknown = set(table["decision"]) - set(DECISIONS)
    if unknown:
        raise ValueError(f"unknown filter decisions {sorted(unknown)}; known: {', '.join(DECISIONS)}")
    counts = pd.crosstab(table["generation"], table["decision"]) if len(table) else pd.DataFrame()
    return counts.reindex(columns=list(DECISIONS), fill_value=0).astype(int).rename_axis(
        index="generation", columns=None)


def filter_savings(table: pd.DataFrame) -> pd.DataFrame:
    """Count and share of candidates per decision over the whole search (the 'total' row of the summary).

    Every decision other than ``evaluate`` skipped the local search and the fitness training.
    """
    counts = decision_counts(table).sum(axis=0)
    total = int(counts.sum())
    return pd.DataFrame({"decision": list(DECISIONS), "candidates": [int(counts[d]) for d in DECISIONS],
                         "share": [counts[d] / total if total else math.nan for d in DECISIONS]})


def read_curves(path: str | os.PathLike) -> pd.DataFrame:
    """Learning curves of ``*_curves.json`` as rows target, method, seed, step, train_loss, val_metric.

    Keys are ``<method>/<seed>`` (meta-test; target "") or ``<dataset>/<model>/<method>/<seed>`` (transfer);
    points are (step, mean training loss since the previous point, validation metric), see evomal.learning.training.
    """
    doc = files.read_json(path)
    rows = []
    try:
        for key, curve in doc["curves"].items():
            parts = key.rsplit("/", 2)
            target, method, seed = (parts if len(parts) == 3 else ["", *parts])
            for step, train_loss, val_metric in curve:
                rows.append({"target": target, "method": method, "seed": int(seed), "step": int(step),
                             "train_loss": files.number(train_loss), "val_metric": files.number(val_metric)})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise files.ResultFileError(f"corrupted results file {path}: not a curves file "
                                    f"({type(exc).__name__}: {exc})") from None
    return pd.DataFrame(rows, columns=["target", "method", "seed", "step", "train_loss", "val_metric"])


def curve_bands(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std (ddof=0, so one seed gives a zero band) and count over seeds per target, method, step.

    Non-finite points (a diverging run) are left out; a run that stopped early simply has no later points.
    """
    finite = curves[np.isfinite(curves[column].to_numpy(float))]
    grouped = finite.groupby(["target", "method", "step"], sort=True)[column]
    return grouped.agg(mean="mean", std=lambda s: float(s.std(ddof=0)), n="count").reset_index()


# =========================================================================== tables
def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not math.isfinite(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def method_table(summary: pd.DataFrame, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Display table of a ``*_summary.tsv`` (evomal.learning.statistics.summarize): one row per target and method.

    ``per_seed`` (the per-seed table) adds the count of diverged runs.
    """
    rows = []
    for r in summary.itertuples(index=False):
        diverged = 0
        if per_seed is not None and "diverged" in per_seed:
            sel = per_seed[(per_seed["target"] == r.target) & (per_seed["method"] == r.method)]
            diverged = int(sel["diverged"].astype(str).str.lower().isin(["true", "1"]).sum())
        is_base = pd.isna(r.baseline_mean)
        rows.append({
            "target": r.target, "method": r.method, "n": int(r.n),
            "mean ± std": f"{_fmt(float(r.mean))} ± {_fmt(float(r.std))}",
            "difference vs baseline": "-" if is_base else _fmt(float(r.mean_difference)),
            "t": _fmt(float(r.t_statistic), 3), "p (paired t-test)": _fmt_p(float(r.p_value)),
            "wins / losses": "-" if is_base else f"{int(r.wins)} / {int(r.losses)}",
            "diverged": diverged,
        })
    return pd.DataFrame(rows, columns=["target", "method", "n", "mean ± std", "difference vs baseline", "t",
                                       "p (paired t-test)", "wins / losses", "diverged"])


def savings_table(table: pd.DataFrame) -> pd.DataFrame:
    """Filter decisions per generation and in total, as shares; 'skipped' = everything not evaluated."""
    counts = decision_counts(table)
    counts.loc["total"] = counts.sum(axis=0)
    total = counts.sum(axis=1).replace(0, np.nan)
    out = pd.DataFrame({"generation": [str(g) for g in counts.index], "candidates": counts.sum(axis=1).to_numpy()})
    for d in DECISIONS:
        out[DECISION_LABELS[d]] = [f"{c} ({_share(c, t)})" for c, t in zip(counts[d], total)]
    skipped = counts.sum(axis=1) - counts["evaluate"]
    out["skipped expensive work"] = [_share(s, t) for s, t in zip(skipped, total)]
    return out


def _share(count, total) -> str:
    return "-" if total is None or pd.isna(total) or not total else f"{100.0 * count / total:.0f}%"


def search_table(table: pd.DataFrame) -> pd.DataFrame:
    stats = fitness_by_generation(table)
    return pd.DataFrame({"generation": stats["generation"], "best": stats["best"].map(_fmt),
                         "median": stats["median"].map(_fmt), "best so far": stats["best_so_far"].map(_fmt),
                         "finite / candidates": [f"{a} / {b}" for a, b in zip(stats["finite"],
                                                                               stats["candidates"])]})


def _cells(frame: pd.DataFrame, cell=str) -> tuple[list[str], list[list[str]]]:
    return [cell(c) for c in frame.columns], [[cell(v) for v in row] for row in frame.itertuples(index=False)]


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (tabulate), cells taken as text."""
    from tabulate import tabulate

    def cell(v) -> str:  # formulas hold * and names _, which Markdown would read as emphasis
        return re.sub(r"([|*_\\`])", r"\\\1", str(v).replace("\n", " "))

    headers, rows = _cells(frame, cell)
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def to_text(frame: pd.DataFrame) -> str:
    """A fixed-width plain-text table for the terminal (tabulate's ``simple`` format)."""
    from tabulate import tabulate

    headers, rows = _cells(frame)
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
