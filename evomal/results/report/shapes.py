"""The learned losses' element-wise shapes against the baseline loss: data, figure and plot entry point.

torch is imported inside the functions that evaluate a learned loss, so ``evomal show`` stays quick.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from evomal.core.joblog import JobLog
from evomal.results.report.plots import OKABE_ITO, _new_figure, _record, _render, _style


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
    """(y, f) -> element-wise values of a compiled loss (evomal.losses.modules.CompiledLoss) in float64."""
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
    from evomal.losses.lossfile import load_loss

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
    fig = _new_figure(max(6.4, 4.4 * len(panels)), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xlabel = "predicted probability f of the class" if shapes.kind == "classification" else "residual f - y"
    for ax, (panel, curves) in zip(axes, panels):
        for i, (name, values) in enumerate(curves.items()):
            baseline = i == len(curves) - 1  # loss_shapes puts the baseline last
            ax.plot(shapes.x, np.where(np.isfinite(values), values, np.nan), label=name,
                    color="black" if baseline else OKABE_ITO[i % (len(OKABE_ITO) - 1)],
                    linestyle="--" if baseline else "-", linewidth=1.6)
        limits = _robust_limits(list(curves.values()))
        if limits:
            ax.set_ylim(*limits)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss term")
        ax.set_title(panel)
    axes[0].legend()
    fig.suptitle(title or ("Learned loss against cross-entropy (element-wise term per class)"
                           if shapes.kind == "classification" else "Learned loss against MSE"))
    return fig


def plot_loss_shape(loss_paths: dict, out_png, *, log: str | None = None) -> None:
    """The learned losses (method -> best/loss.json) against the baseline loss."""
    t0 = time.perf_counter()
    shapes = loss_shapes(loss_paths)
    _render(lambda: draw_loss_shapes(shapes), out_png)
    JobLog(log)(f"plotted {', '.join(loss_paths)}: {out_png}")
    _record(out_png, "plot_loss_shape", t0)


def expression_shapes(expression: str, kind: str, weights, *, points: int = 160) -> ShapeData:
    """Shapes of one loss written as an expression with its edge weights, and of the baseline
    (one panel per class role for classification; the residual at target 0 for regression)."""
    from evomal.losses.codegen import compile_frozen

    return function_shapes(compile_frozen(expression, [float(w) for w in weights]), kind, points=points)


def function_shapes(fn: Callable, kind: str, *, points: int = 160) -> ShapeData:
    """As expression_shapes, for any element-wise ``fn(y, f)`` (a loss of another family: ML3, TaylorGLO)."""
    fns = {"this loss": fn, ("cross-entropy" if kind == "classification" else "MSE"): baseline_elementwise(kind)}
    if kind == "classification":
        return classification_shapes(fns, np.linspace(0.005, 1.0, points))
    return regression_shapes(fns, np.linspace(-2.0, 2.0, points), targets=(0.0,))


def shape_png(shapes: ShapeData, title: str = "", *, dpi: int = 100) -> bytes:
    """A loss-shape figure as PNG bytes (for the tracking's artifacts), in the report's style."""
    import io

    import matplotlib

    from evomal.results.report.plots import _DRAW_LOCK

    with _DRAW_LOCK, matplotlib.rc_context(_style()):
        fig = draw_loss_shapes(shapes, title=title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
