"""Opt-in analyses of the learned losses (docs/analysis.md): stage functions, files in, files out.

- learning-rate sensitivity: the meta-test of the learned losses and the baseline at several initial
  learning rates (``evomal.learning.sensitivity``);
- loss landscapes: the task loss around the networks each loss trained, along filter-normalised random
  directions shared by all networks (``evomal.learning.landscape``);
- search-space statistics: how often each primitive appears in the best losses of the run's searches
  and in every candidate they evaluated (``evomal.gp.usage``).

Everything lands in ``results/<experiment>/analysis/``. Nothing here imports torch at module level, so
the workflow can read the file names cheaply.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.pipeline.config import ConfigError

ANALYSIS_DIR = "analysis"
#: Output files of each analysis, relative to the experiment folder.
ANALYSIS_FILES = {
    "lr_sweep": {"table": f"{ANALYSIS_DIR}/lr_sweep.tsv", "summary": f"{ANALYSIS_DIR}/lr_sweep_summary.tsv",
                 "plot": f"{ANALYSIS_DIR}/lr_sweep.png"},
    "landscape": {"data": f"{ANALYSIS_DIR}/landscape.json", "plot_1d": f"{ANALYSIS_DIR}/landscape_1d.png",
                  "plot_2d": f"{ANALYSIS_DIR}/landscape_2d.png"},
    "primitive_stats": {"table": f"{ANALYSIS_DIR}/primitive_stats.tsv", "plot": f"{ANALYSIS_DIR}/primitive_stats.png"},
}
LR_SWEEP_COLUMNS = ["lr", "method", "seed", "test_metric", "metric", "diverged", "reason"]
LR_SUMMARY_COLUMNS = ["lr", "method", "n", "diverged", "median", "mean", "min", "max"]
PRIMITIVE_COLUMNS = ["scope", "source", "primitive", "occurrences", "in_expressions", "expressions",
                     "share_of_nodes", "share_of_expressions"]
ALL_SCOPE = "all"


def analysis_targets(exp_dir: str, exp: dict) -> list[str]:
    """The files of every enabled analysis of one experiment (none by default)."""
    return [f"{exp_dir}/{path}" for name, outputs in ANALYSIS_FILES.items()
            if exp["analysis"][name]["enabled"] for path in outputs.values()]


def counts_primitives(method: str) -> bool:
    """Whether a method searches over the GP primitives, so its best loss and candidates are expressions
    (evomal, gplfl; not the neural ML3 or the Taylor polynomials of TaylorGLO)."""
    from evomal.methods import get_method

    return "gp_search" in get_method(method).stages


def check_primitive_sources(experiment: str, sources: Mapping) -> None:
    if not sources:
        raise ConfigError(f"config key experiments.{experiment}.analysis.primitive_stats.enabled: no experiment "
                          "of `run` runs a GP search (method evomal or gplfl), so there are no expressions to count")


# --------------------------------------------------------------------------- settings
def lr_sweep_settings(exp: dict) -> dict:
    """The sweep's learning rates, seeds and steps (``null`` seeds / steps: those of ``meta_test``)."""
    sweep, mt = exp["analysis"]["lr_sweep"], exp["meta_test"]
    return {"lrs": [float(lr) for lr in sweep["lrs"]],
            "seeds": list(mt["seeds"] if sweep["seeds"] is None else sweep["seeds"]),
            "steps": int(mt["steps"] if sweep["steps"] is None else sweep["steps"])}


def _metric_name(kind: str) -> str:
    return "error_rate" if kind == "classification" else "mse"


# --------------------------------------------------------------------------- learning-rate sensitivity
def sweep_summary(table):
    """One row per (lr, method), in table order: runs, diverged runs, median / mean / min / max test metric."""
    import pandas as pd

    rows = []
    for (lr, method), g in table.groupby(["lr", "method"], sort=False):
        values = g["test_metric"].astype(float)
        rows.append({"lr": lr, "method": method, "n": len(g), "diverged": int(g["diverged"].astype(bool).sum()),
                     "median": float(values.median()), "mean": float(values.mean()),
                     "min": float(values.min()), "max": float(values.max())})
    return pd.DataFrame(rows, columns=LR_SUMMARY_COLUMNS)


def lr_sweep_stage(loss_paths: dict, out_table, out_summary, *, exp: dict, device: str = "cpu",
                   log: str | None = None, threads: int = 1) -> None:
    """Meta-test the learned losses (method -> loss file) and the baseline at every listed learning rate."""
    import pandas as pd

    from evomal.learning.context import use_threads
    from evomal.learning.sensitivity import lr_sweep
    from evomal.pipeline.stage_inputs import learning_setup
    from evomal.pipeline.testing import _test_losses

    use_threads(threads)
    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="lr sweep: ")
    settings = lr_sweep_settings(exp)
    dev, task, build, training = learning_setup(exp, device)
    losses = _test_losses(loss_paths, task.kind, dev)
    mt = exp["meta_test"]
    kwargs = {k: v for k, v in training.optimizer_kwargs().items() if k != "lr"}  # only the lr varies
    runs = lr_sweep(losses, task, build, lrs=settings["lrs"], seeds=settings["seeds"], steps=settings["steps"],
                    milestones=mt["milestones"], gamma=mt["gamma"], **kwargs)
    metric = _metric_name(task.kind)
    rows = [{"lr": r.lr, "method": r.method, "seed": r.seed, "test_metric": r.test_metric, "metric": metric,
             "diverged": r.diverged, "reason": r.reason or ""} for r in runs]
    table = pd.DataFrame(rows, columns=LR_SWEEP_COLUMNS)
    summary = sweep_summary(table)
    for row in summary.itertuples():
        say(f"lr {row.lr:g} {row.method}: median test {metric} {row.median:.4f} over {row.n} seeds")
    files.write_tsv(out_table, table)
    files.write_tsv(out_summary, summary)
    record_seconds(out_table, "lr_sweep", time.perf_counter() - t0)


# --------------------------------------------------------------------------- loss landscapes
def landscape_stage(loss_paths: dict, out_json, *, exp: dict, device: str = "cpu", log: str | None = None,
                    threads: int = 1) -> None:
    """Landscapes of the task loss around the networks trained by the baseline and by each learned loss.

    The networks train as in the meta-test, from its first seed (``analysis.landscape.steps`` steps,
    default ``meta_test.steps``); directions come from ``analysis.landscape.seed``.
    """
    from evomal.learning.context import use_threads
    from evomal.learning.landscape import landscapes
    from evomal.pipeline.stage_inputs import learning_setup
    from evomal.pipeline.testing import _test_losses

    use_threads(threads)
    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="landscape: ")
    cfg, mt = exp["analysis"]["landscape"], exp["meta_test"]
    steps = int(mt["steps"] if cfg["steps"] is None else cfg["steps"])
    dev, task, build, training = learning_setup(exp, device)
    losses = _test_losses(loss_paths, task.kind, dev)
    coords, results = landscapes(losses, task, build, train_seed=int(mt["seeds"][0]), direction_seed=cfg["seed"],
                                 steps=steps, points_1d=cfg["points_1d"], points_2d=cfg["points_2d"],
                                 span=float(cfg["span"]), samples=cfg["samples"], milestones=mt["milestones"],
                                 gamma=mt["gamma"], **training.optimizer_kwargs())
    doc = {"objective": "cross_entropy" if task.kind == "classification" else "mse", "kind": task.kind,
           "metric": _metric_name(task.kind), "direction_seed": cfg["seed"], "train_seed": int(mt["seeds"][0]),
           "steps": steps, "span": float(cfg["span"]),
           "normalisation": "filter-wise (Li et al. 2018); one-dimensional parameters are not perturbed",
           **coords, "methods": {}}
    for r in results:
        doc["methods"][r.method] = {"center": r.center, "line": r.line, "grid": r.grid, "test_metric": r.test_metric,
                                    "diverged": r.diverged, "reason": r.reason or "",
                                    "direction_norms": r.direction_norms}
        say(f"{r.method}: task loss {r.center:.4f} at the trained network, "
            f"{min(r.line):.4f}..{max(r.line):.4f} along d1")
    files.write_json(out_json, doc)
    record_seconds(out_json, "landscape", time.perf_counter() - t0)


def read_landscape(path) -> dict:
    """A landscape.json with its numbers as floats again (write_json stores inf / nan as strings)."""
    doc = files.read_json(path)
    for entry in doc["methods"].values():
        entry["line"] = [files.number(v) for v in entry["line"]]
        entry["grid"] = [[files.number(v) for v in row] for row in entry["grid"]]
        entry["center"], entry["test_metric"] = files.number(entry["center"]), files.number(entry["test_metric"])
    return doc


# --------------------------------------------------------------------------- search-space statistics
def _evaluated_expressions(tables: Sequence) -> list[str]:
    exprs = []
    for path in tables:
        table = files.read_tsv(path)
        exprs += list(table.loc[table["decision"] == "evaluate", "expression"])
    return exprs


def primitive_stats_stage(sources: Mapping[str, Mapping], out_table, *, log: str | None = None) -> None:
    """Primitive usage of the best losses and of every evaluated candidate, per search and over all.

    ``sources``: experiment -> ``{"best": best/loss.json, "tables": [gen_<g>/fitness.tsv, ...]}``.
    """
    import pandas as pd

    from evomal.gp.usage import primitive_usage

    t0 = time.perf_counter()
    say = JobLog(log)
    collected = {name: {"best": [files.read_json(src["best"])["expression"]],
                        "evaluated": _evaluated_expressions(src["tables"])} for name, src in sources.items()}
    collected[ALL_SCOPE] = {k: [e for name in sources for e in collected[name][k]] for k in ("best", "evaluated")}
    rows = []
    for scope, by_source in collected.items():
        for source, exprs in by_source.items():
            rows += [{"scope": scope, "source": source, **vars(u)} for u in primitive_usage(exprs)]
    frame = pd.DataFrame(rows, columns=PRIMITIVE_COLUMNS)
    files.write_tsv(out_table, frame)
    say(f"{len(sources)} searches: {len(collected[ALL_SCOPE]['best'])} best losses, "
        f"{len(collected[ALL_SCOPE]['evaluated'])} evaluated candidates -> {out_table}")
    record_seconds(out_table, "primitive_stats", time.perf_counter() - t0)

