"""Results of an experiment folder as tables, plots and a summary (DESIGN §1.7, §3: ``report/``).

Tables are pure functions of the result files; plots draw them with matplotlib's object API only
(Figure + Agg canvas, never pyplot), because report jobs may run as threads of one Snakemake process.
torch is imported only where a learned loss is evaluated, so ``evomal show`` stays quick.
"""
from __future__ import annotations

import html
import io
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from evomal.core import files
from evomal.core.joblog import JobLog
from evomal.pipeline.contract import DECISIONS

DECISION_LABELS = {"evaluate": "evaluated", "equivalent": "equivalent", "rejected": "rejected",
                   "gradient_equivalent": "gradient-equivalent", "invalid": "invalid"}
DECISION_COLORS = {"evaluate": "#2b6cb0", "equivalent": "#9ae6b4", "rejected": "#f6ad55",
                   "gradient_equivalent": "#68d391", "invalid": "#a0aec0"}

#: File names under ``<experiment>/report/``; the Snakemake rules build their paths from these.
PLOT_FILES = {
    "fitness": "fitness.png",
    "decisions": "decisions.png",
    "loss_shape": "loss_shape.png",
    "meta_test_curves": "meta_test_curves.png",
    "transfer_curves": "transfer_curves.png",
}
CURVE_TITLES = {"meta_test": "Meta-test: networks trained from scratch, learned losses against the baseline",
                "transfer": "Transfer: the learned loss, unchanged, on other tasks"}
SUMMARY_MD = "summary.md"
SUMMARY_HTML = "summary.html"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# FreeType fonts and mathtext caches are shared between threads; drawing one figure at a time is
# cheap (well under a second per plot) and rules out interleaved rendering.
_DRAW_LOCK = threading.Lock()


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


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency such as tabulate)."""
    def cell(v) -> str:  # formulas hold * and names _, which Markdown would read as emphasis
        text = str(v).replace("\n", " ")
        return re.sub(r"([|*_\\`])", r"\\\1", text)

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def to_text(frame: pd.DataFrame) -> str:
    """A fixed-width plain-text table for the terminal."""
    cols = [str(c) for c in frame.columns]
    cells = [[str(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


# =========================================================================== plots
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    files.atomic_write_bytes(path, buffer.getvalue())


def draw_fitness(stats: pd.DataFrame, title: str = ""):
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    g = stats["generation"].to_numpy()
    ax.plot(g, stats["best"], marker="o", label="best of generation")
    ax.plot(g, stats["median"], marker="s", linestyle="--", label="median of generation")
    ax.step(g, stats["best_so_far"], where="post", color="black", linewidth=1, alpha=0.6, label="best so far")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (validation error rate or MSE; lower is better)")
    ax.set_title(title or "Fitness per generation (rejected and failed candidates excluded)")
    if len(g):
        ax.set_xticks(g if len(g) <= 20 else g[:: max(1, len(g) // 10)])
    ax.grid(alpha=0.3)
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
    if len(g):
        ax.set_xticks(g if len(g) <= 20 else g[:: max(1, len(g) // 10)])
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def draw_curves(curves: pd.DataFrame, metric: str = "validation metric", title: str = ""):
    """One row per target: training loss and validation metric, mean over seeds with a ±1 std band."""
    targets = list(dict.fromkeys(curves["target"])) or [""]
    fig = _new_figure(10.0, 3.6 * len(targets))
    axes = fig.subplots(len(targets), 2, squeeze=False)
    methods = list(dict.fromkeys(curves["method"]))
    colors = {m: f"C{i}" for i, m in enumerate(sorted(methods, key=lambda m: m != "baseline"))}
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
                ax.plot(b["step"], b["mean"], color=colors[method], label=f"{method} (mean of {n} seeds)",
                        linestyle="--" if method == "baseline" else "-")
                ax.fill_between(b["step"], b["mean"] - b["std"], b["mean"] + b["std"], color=colors[method],
                                alpha=0.2, linewidth=0)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
            ax.set_title(target or "")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def _no_data(fig, text: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()


# ---------------------------------------------------------------------- learned loss shapes
@dataclass(frozen=True)
class ShapeData:
    """Element-wise loss values on a grid: classification by predicted probability of a class that is
    the true one (y = 1) or a wrong one (y = 0); regression by residual f - y at several targets y."""

    kind: str
    x: np.ndarray
    curves: dict  # panel -> {name: values}


def classification_shapes(elementwise: dict, probabilities: np.ndarray) -> ShapeData:
    """``elementwise``: name -> callable(y, f) -> tensor, evaluated at y = 1 and y = 0 for f = p."""
    import torch

    p = torch.as_tensor(probabilities, dtype=torch.float64)
    panels = {"true class (y = 1)": {}, "wrong class (y = 0)": {}}
    for name, fn in elementwise.items():
        with torch.no_grad():
            panels["true class (y = 1)"][name] = _as_array(fn(torch.ones_like(p), p), p)
            panels["wrong class (y = 0)"][name] = _as_array(fn(torch.zeros_like(p), p), p)
    return ShapeData("classification", np.asarray(probabilities, float), panels)


def regression_shapes(elementwise: dict, residuals: np.ndarray, targets: Sequence[float] = (-1.0, 0.0, 1.0)
                      ) -> ShapeData:
    import torch

    r = torch.as_tensor(residuals, dtype=torch.float64)
    panels = {}
    for t in targets:
        y = torch.full_like(r, float(t))
        with torch.no_grad():
            panels[f"target y = {t:g}"] = {name: _as_array(fn(y, y + r), r) for name, fn in elementwise.items()}
    return ShapeData("regression", np.asarray(residuals, float), panels)


def _as_array(values, like) -> np.ndarray:
    import torch

    return torch.broadcast_to(values, like.shape).detach().cpu().numpy().astype(float)


def learned_elementwise(loss) -> Callable:
    """(y, f) -> element-wise values of a compiled loss (evomal.losses.compile.CompiledLoss) in float64."""
    import torch

    weights = loss.weights.detach().to(torch.float64).cpu()
    return lambda y, f: loss.compiled(weights, y, f)


def baseline_elementwise(kind: str):
    """Element-wise baseline: -y log f for cross-entropy on softmax outputs, (f - y)^2 for MSE."""
    import torch

    if kind == "classification":
        return lambda y, f: -y * torch.log(f)
    return lambda y, f: (f - y) ** 2


def loss_shapes(loss_paths: dict, *, points: int = 200) -> ShapeData:
    """Shapes of the learned losses (method -> loss.json) with the real compiled modules, and the baseline."""
    from evomal.losses.compile import load_loss

    if not loss_paths:
        raise ValueError("no learned loss to plot (loss_paths is empty)")
    losses = {method: load_loss(path) for method, path in loss_paths.items()}
    kinds = {loss.kind for loss in losses.values()}
    if len(kinds) != 1:
        raise ValueError(f"the learned losses mix task kinds {sorted(kinds)}: {loss_paths}")
    kind = kinds.pop()
    fns = {method: learned_elementwise(loss) for method, loss in losses.items()}
    fns["cross-entropy" if kind == "classification" else "MSE"] = baseline_elementwise(kind)
    if kind == "classification":
        return classification_shapes(fns, np.linspace(0.005, 1.0, points))
    return regression_shapes(fns, np.linspace(-2.0, 2.0, points))


def _robust_limits(values: list[np.ndarray]) -> tuple[float, float] | None:
    """y-limits of all finite values, cut to their 1%..99% range when a steep end (log near 0)
    would otherwise flatten everything else."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    if not finite.size:
        return None
    lo, hi = (float(q) for q in np.quantile(finite, [0.01, 0.99]))
    if hi - lo == 0 or finite.max() - finite.min() <= 3 * (hi - lo):
        lo, hi = float(finite.min()), float(finite.max())
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def draw_loss_shapes(shapes: ShapeData, title: str = ""):
    panels = list(shapes.curves.items())
    fig = _new_figure(4.4 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xlabel = "predicted probability f of the class" if shapes.kind == "classification" else "residual f - y"
    for ax, (panel, curves) in zip(axes, panels):
        for i, (name, values) in enumerate(curves.items()):
            baseline = i == len(curves) - 1  # loss_shapes puts the baseline last
            ax.plot(shapes.x, np.where(np.isfinite(values), values, np.nan), label=name,
                    color="black" if baseline else f"C{i}", linestyle="--" if baseline else "-")
        limits = _robust_limits(list(curves.values()))
        if limits:
            ax.set_ylim(*limits)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss term")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title or ("Learned loss against cross-entropy (element-wise term per class)"
                           if shapes.kind == "classification" else "Learned loss against MSE"))
    return fig


# ---------------------------------------------------------------------- plot entry points (one per rule)
def _record(out_path, stage: str, t0: float) -> None:
    """Compute seconds of a report job, in ``report/timings/`` (for bench/bench_pipeline.py)."""
    files.record_seconds(out_path, stage, time.perf_counter() - t0)


def _render(draw, path) -> None:
    with _DRAW_LOCK:
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


def plot_loss_shape(loss_paths: dict, out_png, *, log: str | None = None) -> None:
    """The learned losses (method -> best/loss.json) against the baseline loss."""
    t0 = time.perf_counter()
    shapes = loss_shapes(loss_paths)
    _render(lambda: draw_loss_shapes(shapes), out_png)
    JobLog(log)(f"plotted {', '.join(loss_paths)}: {out_png}")
    _record(out_png, "plot_loss_shape", t0)


def plot_learning_curves(curves_json, out_png, *, per_seed_tsv=None, title: str = "",
                         log: str | None = None) -> None:
    """Meta-test or transfer learning curves, learned losses against the baseline."""
    t0 = time.perf_counter()
    curves = read_curves(curves_json)
    metric = "validation metric"
    if per_seed_tsv is not None:
        per_seed = files.read_tsv(per_seed_tsv)
        names = set(per_seed.get("metric", pd.Series(dtype=str)).dropna())
        metric = "validation " + " / ".join(sorted(names)) if names else metric
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


# =========================================================================== summary
@dataclass(frozen=True)
class Block:
    """One piece of the summary, rendered to both Markdown and HTML."""

    kind: str  # "h1" | "h2" | "p" | "code" | "math" | "table" | "image" | "list"
    content: object
    extra: str = ""  # link target / alt text


def _read_yaml(path) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise files.ResultFileError(f"missing results file {path}") from None
    except yaml.YAMLError as exc:
        raise files.ResultFileError(f"corrupted results file {path}: not valid YAML ({exc})") from None


def _component_name(spec) -> str:
    return spec if isinstance(spec, str) else (spec or {}).get("name", "?")


def _rel(path, start_dir) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start_dir).resolve())).as_posix()


def summary_blocks(*, experiment: str, out_dir, config: dict | None = None, generations: pd.DataFrame | None = None,
                   best_loss: dict | None = None, loss_py=None, meta_test=None, meta_test_summary=None,
                   transfer=None, transfer_summary=None, plots: dict | None = None,
                   compared: dict | None = None) -> list[Block]:
    """The summary's content; paths (``loss_py``, tables, ``plots``) are linked relative to ``out_dir``.

    ``compared``: label -> loss document of the other experiments' learned losses in this meta-test.
    """
    config = config or {}
    plots = plots or {}
    blocks = [Block("h1", f"{experiment}: results")]
    if config:
        s = config.get("search", {})
        facts = [f"method {config.get('method', '?')}", f"dataset {_component_name(config.get('dataset'))}",
                 f"model {_component_name(config.get('model'))}", f"seed {config.get('seed', '?')}"]
        if config.get("method") != "baseline" and generations is not None:
            done = generations["generation"].nunique() if len(generations) else 0
            facts.append(f"generations {done} of {s.get('generations', '?')} (population {s.get('population', '?')})")
        blocks.append(Block("p", ", ".join(facts) + "."))

    if best_loss is not None:
        blocks.append(Block("h2", "Best loss"))
        blocks.append(Block("p", "Expression (prefix form, edge weights not shown):"))
        blocks.append(Block("code", best_loss.get("expression", "")))
        blocks.append(Block("p", "Readable formula with the meta-learned weights folded in (f: prediction, "
                                 "y: target; log and sqrt are protected by a 1e-7 clamp that is not shown):"))
        blocks.append(Block("code", best_loss.get("formula", "")))
        if best_loss.get("latex"):
            blocks.append(Block("math", best_loss["latex"]))
        facts = []
        if best_loss.get("fitness") is not None:
            facts.append(f"Search fitness {_fmt(files.number(best_loss['fitness']))} (validation, lower is better)")
        if best_loss.get("id") is not None:
            facts.append(f"candidate {best_loss['id']} of generation {best_loss.get('generation', '?')}")
        facts.append(f"{best_loss.get('kind', '?')} loss with {len(best_loss.get('weights', []))} edge weights")
        blocks.append(Block("p", "; ".join(facts) + "."))
        if loss_py is not None:
            blocks.append(Block("list", [("Standalone PyTorch source (needs only torch): ", _rel(loss_py, out_dir))]))

    if compared:
        blocks.append(Block("h2", "Compared learned losses"))
        blocks.append(Block("p", "Best losses of the experiments named in `compare`, meta-tested here too:"))
        blocks.append(Block("table", pd.DataFrame(
            [{"experiment": label, "method": doc.get("method", "?"), "formula": doc.get("formula", "?"),
              "search fitness": _fmt(files.number(doc["fitness"])) if doc.get("fitness") is not None else "-"}
             for label, doc in compared.items()])))

    for title, per_seed_path, summary_path in (("Meta-test", meta_test, meta_test_summary),
                                               ("Transfer", transfer, transfer_summary)):
        if summary_path is None:
            continue
        blocks.append(Block("h2", title))
        per_seed = files.read_tsv(per_seed_path) if per_seed_path is not None else None
        summary = files.read_tsv(summary_path)
        if summary.empty:
            blocks.append(Block("p", "No runs were recorded."))
            continue
        metric = ", ".join(sorted(set(per_seed["metric"].dropna()))) if per_seed is not None else "test metric"
        blocks.append(Block("p", f"Test {metric} per method over the seeds (mean ± sample std; lower is better). "
                                 "The learned losses and the baseline trained with the same seeds, batches and "
                                 "settings; p is a two-sided paired t-test against the baseline over seeds; "
                                 "wins / losses count seeds where the method's test metric is lower / higher "
                                 "than the baseline's."))
        blocks.append(Block("table", method_table(summary, per_seed)))

    if generations is not None and len(generations):
        blocks.append(Block("h2", "Filter savings"))
        blocks.append(Block("p", "Share of candidates per filter decision. Only 'evaluated' candidates ran the "
                                 "local search and the fitness training; the others were skipped (equivalent: same "
                                 "canonical form as an earlier loss; gradient-equivalent: same gradient signature; "
                                 "rejected: failed the rejection protocol; invalid: unusable expression)."))
        savings = filter_savings(generations).set_index("decision")
        total, evaluated = int(savings["candidates"].sum()), int(savings.loc["evaluate", "candidates"])
        blocks.append(Block("p", f"The filters spared {total - evaluated} of {total} candidates "
                                 f"({_share(total - evaluated, total)}) the local search and fitness training."))
        blocks.append(Block("table", savings_table(generations)))
        blocks.append(Block("h2", "Search progress"))
        blocks.append(Block("table", search_table(generations)))

    titles = {"fitness": "Fitness per generation", "decisions": "Filter decisions per generation",
              "loss_shape": "Learned loss against the baseline", "meta_test_curves": "Meta-test learning curves",
              "transfer_curves": "Transfer learning curves"}
    present = [(name, path) for name, path in plots.items() if path is not None]
    if present:
        blocks.append(Block("h2", "Plots"))
        for name, path in present:
            blocks.append(Block("image", _rel(path, out_dir), titles.get(name, name)))
    return blocks


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.content}")
        elif b.kind == "h2":
            out.append(f"## {b.content}")
        elif b.kind == "p":
            out.append(str(b.content))
        elif b.kind == "code":
            out.append(f"```\n{b.content}\n```")
        elif b.kind == "math":
            out.append(f"$$\n{b.content}\n$$")
        elif b.kind == "table":
            out.append(to_markdown(b.content))
        elif b.kind == "image":
            out.append(f"### {b.extra}\n\n![{b.extra}]({b.content})")
        elif b.kind == "list":
            out.append("\n".join(f"- {text}[{target}]({target})" for text, target in b.content))
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[Block], title: str, base_dir=".") -> str:
    """Self-contained HTML: the plots (linked relative to ``base_dir``) are embedded as data URIs."""
    import base64

    esc = html.escape
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            out.append(f"<{b.kind}>{esc(str(b.content))}</{b.kind}>")
        elif b.kind == "code":
            out.append(f"<pre><code>{esc(str(b.content))}</code></pre>")
        elif b.kind == "math":
            out.append(f"<p>LaTeX:</p><pre><code>{esc(str(b.content))}</code></pre>")
        elif b.kind == "table":
            frame = b.content
            head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>"
                           for row in frame.itertuples(index=False))
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "image":
            data = base64.b64encode((Path(base_dir) / str(b.content)).read_bytes()).decode()
            out.append(f"<h3>{esc(b.extra)}</h3><img alt=\"{esc(b.extra)}\" style=\"max-width:100%\" "
                       f"src=\"data:image/png;base64,{data}\">")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(text)}{esc(target)}</li>" for text, target in b.content)
                       + "</ul>")
    style = ("body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:0.2em 0.6em;"
             "text-align:left}pre{background:#f5f5f5;padding:0.5em;white-space:pre-wrap}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_summary(md_path, html_path=None, *, experiment: str, config=None, fitness_tables: Sequence = (),
                  best_loss=None, loss_py=None, meta_test=None, meta_test_summary=None, transfer=None,
                  transfer_summary=None, plots: dict | None = None, compared: Sequence = (),
                  log: str | None = None) -> list[Block]:
    """``report/summary.md`` (and its HTML twin for the Snakemake report) from the result files.

    Arguments are paths; those left None are sections the experiment does not have. ``compared``: the
    ``<experiment>/best/loss.json`` files of other experiments in the meta-test.
    """
    out_dir = Path(md_path).parent
    blocks = summary_blocks(
        experiment=experiment, out_dir=out_dir, config=_read_yaml(config) if config is not None else None,
        generations=read_generations(fitness_tables) if fitness_tables else None,
        best_loss=files.read_json(best_loss) if best_loss is not None else None, loss_py=loss_py,
        meta_test=meta_test, meta_test_summary=meta_test_summary, transfer=transfer,
        transfer_summary=transfer_summary, plots=plots,
        compared={Path(p).parent.parent.name: files.read_json(p) for p in compared})
    files.atomic_write_bytes(md_path, render_markdown(blocks).encode())
    if html_path is not None:
        files.atomic_write_bytes(html_path, render_html(blocks, f"{experiment}: results", out_dir).encode())
    JobLog(log)(f"wrote {md_path}")
    return blocks


def write_summary_from_inputs(inputs: dict, md_path, html_path, *, experiment: str, log: str | None = None):
    """write_summary with the named inputs of the Snakemake rule (keys as in report.smk's report_inputs)."""
    t0 = time.perf_counter()
    plots = {name: inputs.get(name) for name in PLOT_FILES}
    keys = ("config", "best_loss", "loss_py", "meta_test", "meta_test_summary", "transfer", "transfer_summary")
    blocks = write_summary(md_path, html_path, experiment=experiment, plots=plots,
                           fitness_tables=list(inputs.get("fitness_tables") or []),
                           compared=list(inputs.get("compared") or []), log=log,
                           **{k: inputs.get(k) for k in keys})
    _record(md_path, "report", t0)
    return blocks


# =========================================================================== a whole folder
def experiment_inputs(exp_dir: str | os.PathLike) -> dict:
    """The report inputs present in an experiment folder (for building a report without Snakemake)."""
    d = Path(exp_dir)
    present = lambda name: d / name if (d / name).exists() else None  # noqa: E731
    return {"config": present("config.yaml"), "fitness_tables": generation_tables(d),
            "best_loss": present("best/loss.json"), "meta_test": present("meta_test.tsv"),
            "meta_test_summary": present("meta_test_summary.tsv"), "meta_test_curves": present("meta_test_curves.json"),
            "transfer": present("transfer.tsv"), "transfer_summary": present("transfer_summary.tsv"),
            "transfer_curves": present("transfer_curves.json")}


def build_report(exp_dir: str | os.PathLike, *, loss_paths: dict | None = None) -> dict[str, Path]:
    """Everything the Snakemake rules make for one experiment folder, from the files it holds.

    ``loss_paths`` (method -> loss.json) defaults to this experiment's own best loss. Returns name -> path.
    """
    from evomal.losses.export import write_torch_source

    d = Path(exp_dir)
    out = d / "report"
    inp = experiment_inputs(d)
    made: dict[str, Path] = {}
    if inp["fitness_tables"]:
        made["fitness"], made["decisions"] = out / PLOT_FILES["fitness"], out / PLOT_FILES["decisions"]
        plot_search(inp["fitness_tables"], made["fitness"], made["decisions"])
    if inp["best_loss"] is not None:
        made["loss_py"] = d / "best" / "loss.py"
        write_torch_source(inp["best_loss"], made["loss_py"])
    if loss_paths is None and inp["best_loss"] is not None:
        method = files.read_json(inp["best_loss"]).get("method") or "learned"
        loss_paths = {method: inp["best_loss"]}
    if loss_paths:
        made["loss_shape"] = out / PLOT_FILES["loss_shape"]
        plot_loss_shape(loss_paths, made["loss_shape"])
    for stage in ("meta_test", "transfer"):
        if inp[f"{stage}_curves"] is not None:
            made[f"{stage}_curves"] = out / PLOT_FILES[f"{stage}_curves"]
            plot_learning_curves(inp[f"{stage}_curves"], made[f"{stage}_curves"], per_seed_tsv=inp[stage],
                                 title=CURVE_TITLES[stage])
    plots = {k: v for k, v in made.items() if k in PLOT_FILES}
    made["summary"], made["summary_html"] = out / SUMMARY_MD, out / SUMMARY_HTML
    write_summary(made["summary"], made["summary_html"], experiment=d.name, config=inp["config"],
                  fitness_tables=inp["fitness_tables"], best_loss=inp["best_loss"], loss_py=made.get("loss_py"),
                  meta_test=inp["meta_test"], meta_test_summary=inp["meta_test_summary"], transfer=inp["transfer"],
                  transfer_summary=inp["transfer_summary"], plots=plots)
    return made


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


def check_report_dir(report_dir: str | os.PathLike, *, expected: Iterable[str] = ()) -> list[Path]:
    """Check a ``<experiment>/report`` folder: summary.md (+ summary.html) and every plot it links.

    ``expected``: plot names (keys of PLOT_FILES) that must be among them. Returns the PNGs checked;
    raises AssertionError naming the first problem. Reusable after a real pipeline run.
    """
    report_dir = Path(report_dir)
    md = report_dir / SUMMARY_MD
    assert md.is_file(), f"{md}: missing"
    text = md.read_text()
    assert text.startswith("# ") and len(text) > 200, f"{md}: too short to be a summary"
    assert (report_dir / SUMMARY_HTML).is_file(), f"{report_dir / SUMMARY_HTML}: missing"
    linked = [report_dir / target for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)]
    for name in expected:
        path = report_dir / PLOT_FILES[name]
        assert path in linked, f"{md}: does not link the {name} plot {PLOT_FILES[name]}"
    assert linked, f"{md}: links no plot"
    for path in linked:
        check_png(path)
    return linked
