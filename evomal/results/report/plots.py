"""Plots of a search and of learning curves, and the checks of a PNG.

Matplotlib's object API only (Figure + Agg canvas, never pyplot), because report jobs may run as
threads of one Snakemake process; every figure is drawn and saved under one lock.
"""
from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from evomal.core import files
from evomal.core.joblog import JobLog
# vector_path: with the file contract, which the Snakefile reads at parse time without pandas/matplotlib
from evomal.pipeline.contract import DECISIONS, VECTOR_SUFFIX, vector_path  # noqa: F401  (re-exported)
from evomal.pipeline.progress import metric_words
from evomal.results.report.tables import (DECISION_LABELS, curve_bands, decision_counts, fitness_by_generation,
                                          read_curves, read_generations)


#: Okabe & Ito's colour-blind-safe palette (black last: it is the baseline's colour)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

#: one hue per filter decision, distinct for the common colour-vision deficiencies (Okabe-Ito, grey)
DECISION_COLORS = {"evaluate": "#0072B2", "equivalent": "#56B4E9", "rejected": "#D55E00",
                   "gradient_equivalent": "#CC79A7", "invalid": "#999999"}

CURVE_TITLES = {"meta_test": "Meta-test: networks trained from scratch, learned losses against the baseline",
                "transfer": "Transfer: the learned loss, unchanged, on other tasks"}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: raster resolution of the PNGs; every PNG has an SVG twin (vector, for papers) beside it
PNG_DPI = 200

#: the style every figure is drawn in (a context, not a global setting: other code may use matplotlib)
STYLE = {"axes.prop_cycle": None, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "font.size": 10, "legend.fontsize": "small", "legend.frameon": False,
         "svg.fonttype": "none", "svg.hashsalt": "evomal"}  # text stays text; ids are reproducible

# FreeType fonts and mathtext caches are shared between threads; drawing one figure at a time is
# cheap (well under a second per plot) and rules out interleaved rendering.
_DRAW_LOCK = threading.Lock()


# =========================================================================== figures
def _style() -> dict:
    from matplotlib import cycler

    return {**STYLE, "axes.prop_cycle": cycler(color=list(OKABE_ITO))}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike) -> None:
    """The PNG at PNG_DPI and its SVG twin (no date inside, so the same figure gives the same bytes)."""
    for target, fmt, extra in ((Path(path), "png", {"dpi": PNG_DPI}),
                               (vector_path(path), "svg", {"metadata": {"Date": None}})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, **extra)
        files.atomic_write_bytes(target, buffer.getvalue())


def metric_label(names) -> str:
    """Metric names of the tables as words: ``error rate``, ``MSE``."""
    return " / ".join(metric_words(n) for n in sorted(set(names))) or "metric"


def _nonnegative_limits(ax, values) -> None:
    """A metric axis starts at 0; a constant curve gets a range around its value, not matplotlib's
    +-0.05 around it (which draws an error rate of 0 between -0.04 and 0.04)."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return
    hi = float(finite.max())
    if float(finite.min()) == hi:
        ax.set_ylim(0.0, hi * 1.25 if hi > 0 else 1.0)
    else:
        ax.set_ylim(bottom=0.0)


def _free_limits(ax, values) -> None:
    """A constant curve of a quantity without a natural floor (a learned loss) sits mid-axis."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    if finite.size and float(finite.min()) == float(finite.max()):
        v = float(finite[0])
        pad = max(abs(v) * 0.25, 0.5)
        ax.set_ylim(v - pad, v + pad)


def draw_fitness(stats: pd.DataFrame, title: str = ""):
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    g = stats["generation"].to_numpy()
    ax.plot(g, stats["best"], marker="o", color=OKABE_ITO[0], label="best of generation")
    ax.plot(g, stats["median"], marker="s", linestyle="--", color=OKABE_ITO[1], label="median of generation")
    ax.step(g, stats["best_so_far"], where="post", color="black", linewidth=1, alpha=0.7, label="best so far")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness: validation error rate or MSE (lower is better)")
    ax.set_title(title or "Fitness per generation (rejected and failed candidates left out)")
    if len(g):
        ax.set_xticks(g if len(g) <= 20 else g[:: max(1, len(g) // 10)])
    _nonnegative_limits(ax, np.concatenate([stats["best"].to_numpy(float), stats["median"].to_numpy(float)]))
    ax.legend()
    return fig


def draw_decisions(counts: pd.DataFrame, title: str = ""):
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    g = counts.index.to_numpy()
    bottom = np.zeros(len(g))
    for d in DECISIONS:
        values = counts[d].to_numpy(float)
        ax.bar(g, values, bottom=bottom, color=DECISION_COLORS[d], label=DECISION_LABELS[d], edgecolor="white")
        bottom += values
    ax.set_xlabel("generation")
    ax.set_ylabel("candidates")
    ax.set_title(title or "Filter decisions per generation")
    ax.grid(axis="x", visible=False)
    if len(g):
        ax.set_xticks(g if len(g) <= 20 else g[:: max(1, len(g) // 10)])
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def method_styles(methods) -> dict:
    """method -> line style: the baseline black and dashed, the others in Okabe-Ito colours."""
    colours = iter(OKABE_ITO[:-1] * 4)
    return {m: ({"color": "black", "linestyle": "--"} if m == "baseline" else {"color": next(colours), "linestyle": "-"})
            for m in sorted(methods, key=lambda m: m != "baseline")}


def draw_curves(curves: pd.DataFrame, metric: str = "validation metric", title: str = ""):
    """One row per target: training loss and validation metric from step 0, mean over seeds with a
    shaded band of one standard deviation (labelled in the legend)."""
    from matplotlib.patches import Patch

    targets = list(dict.fromkeys(curves["target"])) or [""]
    fig = _new_figure(10.0, 3.6 * len(targets))
    axes = fig.subplots(len(targets), 2, squeeze=False)
    methods = list(dict.fromkeys(curves["method"]))
    styles = method_styles(methods)
    for row, target in zip(axes, targets):
        sel = curves[curves["target"] == target]
        for ax, column, label in ((row[0], "train_loss", "training loss (each method's own loss)"),
                                  (row[1], "val_metric", metric)):
            bands = curve_bands(sel, column)
            for method in methods:
                b = bands[bands["method"] == method]
                if b.empty:
                    continue
                n = int(sel[sel["method"] == method]["seed"].nunique())
                ax.plot(b["step"], b["mean"], label=f"{method} (mean of {n} seeds)", **styles[method])
                ax.fill_between(b["step"], b["mean"] - b["std"], b["mean"] + b["std"], color=styles[method]["color"],
                                alpha=0.15, linewidth=0)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
            ax.set_title(target or "")
            ax.set_xlim(left=0)
            (_nonnegative_limits if column == "val_metric" else _free_limits)(ax, bands["mean"].to_numpy(float))
        handles, labels = row[1].get_legend_handles_labels()
        band = Patch(facecolor="grey", alpha=0.3, label="shaded: mean ± 1 std over seeds")
        row[1].legend(handles + [band], labels + [band.get_label()])
    if title:
        fig.suptitle(title)
    return fig


def _no_data(fig, text: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()


# --------------------------------------------------------------------------- plot entry points (one per rule)
def _record(out_path, stage: str, t0: float) -> None:
    """Compute seconds of a report job, in ``report/timings/`` (for bench/bench_pipeline.py)."""
    files.record_seconds(out_path, stage, time.perf_counter() - t0)


def _render(draw, path) -> None:
    """Draw (in the project's style) and save the PNG and its SVG twin, one figure at a time."""
    import matplotlib

    with _DRAW_LOCK, matplotlib.rc_context(_style()):
        _save_png(draw(), path)


def plot_search(fitness_tables: Sequence[str | os.PathLike], fitness_png, decisions_png, *,
                log: str | None = None) -> None:
    """Fitness per generation and filter decisions per generation of one search."""
    t0 = time.perf_counter()
    table = read_generations(fitness_tables)
    _render(lambda: draw_fitness(fitness_by_generation(table)), fitness_png)
    _render(lambda: draw_decisions(decision_counts(table)), decisions_png)
    JobLog(log)(f"plotted {len(fitness_tables)} generations: {fitness_png}, {decisions_png}")
    _record(fitness_png, "plot_search", t0)


def plot_learning_curves(curves_json, out_png, *, per_seed_tsv=None, title: str = "",
                         log: str | None = None) -> None:
    """Meta-test or transfer learning curves, learned losses against the baseline."""
    t0 = time.perf_counter()
    curves = read_curves(curves_json)
    metric = "validation metric"
    if per_seed_tsv is not None:
        per_seed = files.read_tsv(per_seed_tsv)
        names = set(per_seed.get("metric", pd.Series(dtype=str)).dropna())
        metric = "validation " + metric_label(names) if names else metric
        targets = list(dict.fromkeys(per_seed.get("target", pd.Series(dtype=str)).dropna()))
        if len(targets) == 1:  # meta-test curve keys carry no target; name it from the table
            curves["target"] = curves["target"].replace("", targets[0])

    def draw():
        if curves.empty:
            fig = _new_figure(6.4, 3.0)
            _no_data(fig, "no learning curve points were recorded")
            return fig
        return draw_curves(curves, metric=metric, title=title)

    _render(draw, out_png)
    JobLog(log)(f"plotted {curves[['target', 'method', 'seed']].drop_duplicates().shape[0]} runs: {out_png}")
    _record(out_png, f"plot_{Path(out_png).stem}", t0)


# =========================================================================== checks
def check_png(path: str | os.PathLike, *, min_bytes: int = 5000) -> None:
    """Raise AssertionError unless ``path`` is a loadable, non-blank PNG of a plausible size."""
    from matplotlib.image import imread

    path = Path(path)
    assert path.is_file(), f"{path}: missing"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path}: not a PNG (magic bytes {data[:8]!r})"
    assert len(data) >= min_bytes, f"{path}: only {len(data)} bytes, expected a real plot (>= {min_bytes})"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= 100 and image.shape[1] >= 100, f"{path}: image shape {image.shape}"
    assert float(image[..., :3].std()) > 0.01, f"{path}: the image is blank"


def check_svg(path: str | os.PathLike) -> None:
    """Raise AssertionError unless ``path`` is an SVG drawing with some text in it (axis labels)."""
    path = Path(path)
    assert path.is_file(), f"{path}: missing"
    text = path.read_text(errors="replace")
    assert "<svg" in text[:2000] and text.rstrip().endswith("</svg>"), f"{path}: not an SVG document"
    assert "<text" in text or "<path" in text, f"{path}: an empty drawing"
