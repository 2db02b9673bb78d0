"""Plots of the opt-in analyses (docs/analysis.md): learning-rate sensitivity, loss landscapes, primitive usage.

Same conventions as ``plots``: Matplotlib's object API, every figure drawn and saved under the draw lock,
the baseline drawn black and dashed.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from evomal.core import files
from evomal.core.joblog import JobLog
from evomal.pipeline.analysis import ALL_SCOPE, read_landscape
from evomal.results.report.plots import _new_figure, _no_data, _record, _render

BASELINE = "baseline"


def _styles(methods) -> dict:
    """method -> plot keywords: the baseline black and dashed, learned losses in colour."""
    out, colour = {}, 0
    for method in methods:
        if method == BASELINE:
            out[method] = {"color": "black", "linestyle": "--"}
        else:
            out[method] = {"color": f"C{colour}", "linestyle": "-"}
            colour += 1
    return out


# --------------------------------------------------------------------------- learning-rate sensitivity
def draw_lr_sweep(summary: pd.DataFrame, metric: str = "test metric", title: str = ""):
    fig = _new_figure(6.4, 4.2)
    if summary.empty:
        _no_data(fig, "no learning-rate sweep runs were recorded")
        return fig
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(summary["method"]))
    styles = _styles(methods)
    finite_all = summary["max"].astype(float)
    top = float(finite_all[np.isfinite(finite_all)].max()) if np.isfinite(finite_all).any() else 1.0
    for method in methods:
        s = summary[summary["method"] == method].sort_values("lr")
        lr, median = s["lr"].to_numpy(float), s["median"].to_numpy(float)
        ok = np.isfinite(median)
        ax.plot(lr, np.where(ok, median, np.nan), marker="o", label=f"{method} (median of {int(s['n'].max())} seeds)",
                **styles[method])
        lo, hi = s["min"].to_numpy(float), s["max"].to_numpy(float)
        band = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(lr, np.where(band, lo, np.nan), np.where(band, hi, np.nan), color=styles[method]["color"],
                        alpha=0.12, linewidth=0)
        if (~ok).any():  # a median that diverged has no value: mark it at the top of the axis
            ax.scatter(lr[~ok], np.full((~ok).sum(), top), marker="x", s=60, color=styles[method]["color"],
                       label=f"{method}: diverged (median inf)")
    ax.set_xscale("log")
    lrs = sorted(set(summary["lr"].astype(float)))
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_xlabel("initial learning rate (log scale)")
    ax.set_ylabel(f"median {metric} (lower is better)")
    ax.set_title(title or "Learning-rate sensitivity (band: min..max over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def plot_lr_sweep(summary_tsv, out_png, *, table_tsv=None, log: str | None = None) -> None:
    """Median test metric against the initial learning rate, every method on the same axes."""
    t0 = time.perf_counter()
    summary = files.read_tsv(summary_tsv)
    metric = "test metric"
    if table_tsv is not None:
        names = sorted(set(files.read_tsv(table_tsv)["metric"].dropna()))
        metric = "test " + " / ".join(names) if names else metric
    _render(lambda: draw_lr_sweep(summary, metric), out_png)
    JobLog(log)(f"plotted {len(summary)} (lr, method) medians: {out_png}")
    _record(out_png, "plot_lr_sweep", t0)


# --------------------------------------------------------------------------- loss landscapes
def _finite(values) -> np.ndarray:
    arr = np.asarray(values, float)
    return arr[np.isfinite(arr)]


def draw_landscape_1d(doc: dict, title: str = ""):
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    x = np.asarray(doc["coords_1d"], float)
    styles = _styles(doc["methods"])
    values = []
    for method, entry in doc["methods"].items():
        line = np.asarray(entry["line"], float)
        values.append(_finite(line))
        label = f"{method} (test {doc['metric']} {entry['test_metric']:.3g})"
        ax.plot(x, np.where(np.isfinite(line), line, np.nan), label=label, **styles[method])
    finite = np.concatenate(values) if values else np.array([])
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
        ax.set_yscale("log")  # a steep rim would flatten the basin
    ax.axvline(0.0, color="grey", linewidth=0.8, alpha=0.6)
    ax.set_xlabel("step along the filter-normalised direction d1 (0: the trained network)")
    ax.set_ylabel(f"training {doc['objective']} on {doc['samples']} samples")
    ax.set_title(title or "Loss landscape (1-D), same direction for every network")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _levels(values: np.ndarray):
    """(contour levels, norm) of one panel: log-spaced where the loss spans more than a decade."""
    from matplotlib.colors import LogNorm

    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi / lo > 10:
        return np.geomspace(lo, hi, 16), LogNorm(lo, hi)
    return np.linspace(lo, hi, 16), None


def draw_landscape_2d(doc: dict, title: str = ""):
    methods = list(doc["methods"])
    fig = _new_figure(5.0 * max(1, len(methods)), 4.2)
    if not methods:
        _no_data(fig, "no landscape was recorded")
        return fig
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    c = np.asarray(doc["coords_2d"], float)
    for ax, method in zip(axes, methods):
        entry = doc["methods"][method]
        grid = np.ma.masked_invalid(np.asarray(entry["grid"], float))
        finite = grid.compressed()
        if finite.size >= 4 and finite.max() > finite.min():
            # each panel has its own levels: losses trained by different objectives sit at different
            # heights, and a shared scale would flatten the one with the smaller range (the 1-D plot
            # compares heights). grid[i][j] is at (c[i] along d1, c[j] along d2).
            levels, norm = _levels(finite)
            filled = ax.contourf(c, c, grid.T, levels=levels, norm=norm, cmap="viridis")
            ax.contour(c, c, grid.T, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
            fig.colorbar(filled, ax=ax, format="%.3g", shrink=0.85,
                         label=f"training {doc['objective']}" + (" (log colours)" if norm is not None else ""))
        else:
            ax.text(0.5, 0.5, "no finite variation of the loss\n(diverged or flat)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.plot([0], [0], marker="*", color="red", markersize=10)
        ax.set_xlabel("d1")
        ax.set_ylabel("d2")
        ax.set_title(f"{method}: {doc['objective']} {entry['center']:.3g} at the centre", fontsize="medium")
        ax.set_aspect("equal")
    fig.suptitle(title or "Loss landscape (2-D), same directions for every network (red star: trained network)")
    return fig


def plot_landscape(landscape_json, out_1d_png, out_2d_png, *, log: str | None = None) -> None:
    """The 1-D curves (every network on one axis) and the 2-D contours (one panel per network)."""
    t0 = time.perf_counter()
    doc = read_landscape(landscape_json)
    _render(lambda: draw_landscape_1d(doc), out_1d_png)
    _render(lambda: draw_landscape_2d(doc), out_2d_png)
    JobLog(log)(f"plotted the landscapes of {', '.join(doc['methods'])}: {out_1d_png}, {out_2d_png}")
    _record(out_1d_png, "plot_landscape", t0)


# --------------------------------------------------------------------------- search-space statistics
SOURCE_LABELS = {"best": "best losses", "evaluated": "evaluated candidates"}


def draw_primitive_stats(table: pd.DataFrame, title: str = ""):
    fig = _new_figure(11.0, 4.2)
    rows = table[table["scope"] == ALL_SCOPE]
    if rows.empty or int(rows["expressions"].max()) == 0:
        _no_data(fig, "no expressions to count")
        return fig
    axes = fig.subplots(1, 2)
    primitives = list(dict.fromkeys(rows["primitive"]))
    x = np.arange(len(primitives))
    sources = list(dict.fromkeys(rows["source"]))
    width = 0.8 / max(1, len(sources))
    for ax, column, ylabel in ((axes[0], "share_of_expressions", "share of expressions using the primitive"),
                               (axes[1], "share_of_nodes", "share of all primitive nodes")):
        for k, source in enumerate(sources):
            s = rows[rows["source"] == source].set_index("primitive").loc[primitives]
            n = int(s["expressions"].iloc[0])
            ax.bar(x + (k - (len(sources) - 1) / 2) * width, s[column].to_numpy(float), width,
                   label=f"{SOURCE_LABELS.get(source, source)} (n = {n})", color=f"C{k}")
        ax.set_xticks(x, primitives, rotation=45, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, max(1e-9, math.ceil(float(rows[column].max()) * 10 + 0.5) / 10))
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize="small")
    scopes = [s for s in dict.fromkeys(table["scope"]) if s != ALL_SCOPE]
    fig.suptitle(title or f"Primitive usage over {len(scopes)} search(es): {', '.join(scopes)}")
    return fig


def plot_primitive_stats(table_tsv, out_png, *, log: str | None = None) -> None:
    """Bar chart of how often each primitive appears in the best losses and in the evaluated candidates."""
    t0 = time.perf_counter()
    table = files.read_tsv(table_tsv)
    _render(lambda: draw_primitive_stats(table), out_png)
    JobLog(log)(f"plotted primitive usage: {out_png}")
    _record(out_png, "plot_primitive_stats", t0)
