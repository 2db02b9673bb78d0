"""The answer in words: is the learned loss better than the baseline on test?

One sentence per learned loss and target, from a ``*_summary.tsv`` (evomal.learning.statistics.summarize)
and its per-seed table: "better" or "worse" when the paired t-test over seeds gives p < ``ALPHA``,
else "not significantly different from". ``evomal show``, the summary and the end of a Snakemake run
(``onsuccess``) all print these sentences.
"""
from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from evomal.core import files
from evomal.pipeline.progress import metric_words

#: significance level of the paired t-test behind "better" / "worse"
ALPHA = 0.05
#: what the baseline of each metric is, in words
BASELINE_WORDS = {"error_rate": "cross-entropy", "mse": "MSE"}


@dataclass(frozen=True)
class Verdict:
    """One learned loss against the baseline on one target (a record of the summary tables)."""

    target: str
    method: str
    metric: str
    n: int
    mean: float
    baseline_mean: float
    p_value: float
    diverged: int = 0

    @property
    def word(self) -> str:
        if not math.isfinite(self.mean) or self.diverged:
            return "worse than"
        if math.isnan(self.p_value) or self.p_value >= ALPHA:
            return "not significantly different from"
        return "better than" if self.mean < self.baseline_mean else "worse than"

    def sentence(self, *, subject: str | None = None, where: str = "test") -> str:
        """``the learned loss (evomal) is better than cross-entropy on test, p = 0.031 (error rate ...)``."""
        subject = subject or f"the learned loss ({self.method})"
        baseline = BASELINE_WORDS.get(self.metric, "the baseline")
        p = ("no test with one seed" if self.n < 2 and math.isnan(self.p_value)
             else f"p = {_p(self.p_value)}")
        detail = (f"{metric_words(self.metric)} {_num(self.mean)} vs {_num(self.baseline_mean)}, mean of "
                  f"{self.n} seed{'s' if self.n != 1 else ''}")
        if self.diverged:
            detail += f"; diverged on {self.diverged}"
        return f"{subject} is {self.word} {baseline} on {where}, {p} ({detail})"


def _num(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("inf" if x > 0 else "nan")


def _p(p: float) -> str:
    if math.isnan(p):
        return "undefined"
    if p == 0.0:  # the same difference on every seed (statistics.paired_test)
        return "0"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def verdicts(summary: pd.DataFrame, per_seed: pd.DataFrame | None, *, exclude: Iterable[str] = ()) -> list[Verdict]:
    """A verdict per (target, method) of ``summary`` except the baseline and the names in ``exclude``
    (the reference losses, which are not learned)."""
    skip = {"baseline", *exclude}
    out = []
    for r in summary.to_dict("records"):
        if r["method"] in skip or pd.isna(r.get("baseline_mean")):
            continue
        metric, diverged = "metric", 0
        if per_seed is not None and len(per_seed):
            sel = per_seed[(per_seed["target"] == r["target"]) & (per_seed["method"] == r["method"])]
            if len(sel):
                metric = str(sel["metric"].iloc[0])
                diverged = int(sel["diverged"].astype(str).str.lower().isin(["true", "1"]).sum())
        out.append(Verdict(str(r["target"]), str(r["method"]), metric, int(r["n"]), float(r["mean"]),
                           float(r["baseline_mean"]), float(r["p_value"]), diverged))
    return out


def experiment_verdicts(exp_dir: str | Path, config: dict | None = None) -> list[str]:
    """Sentences for an experiment folder: the meta-test first, then each transfer target."""
    exp_dir = Path(exp_dir)
    config = config or {}
    exclude = (config.get("meta_test") or {}).get("references") or ()
    lines = []
    for stage in ("meta_test", "transfer"):
        summary_path = exp_dir / f"{stage}_summary.tsv"
        if not summary_path.exists():
            continue
        per_seed_path = exp_dir / f"{stage}.tsv"
        per_seed = files.read_tsv(per_seed_path) if per_seed_path.exists() else None
        for v in verdicts(files.read_tsv(summary_path), per_seed, exclude=exclude):
            place = "test" if stage == "meta_test" else f"{v.target} (transfer, test split)"
            lines.append(_capital(v.sentence(where=place)))
    return lines


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _program(name: str) -> str:
    """A command of this environment as a person types it: bare when it is the one on PATH."""
    here = Path(sys.executable).parent / name
    return name if shutil.which(name) == str(here) or not here.exists() else _relative(here)


def show_command(exp_dir: str | Path) -> str:
    """How to look at an experiment: ``evomal show <folder>`` with the evomal that runs this code."""
    return f"{_program('evomal')} show {_relative(Path(exp_dir))}"


def mlflow_hint(exp_dir: str | Path) -> str | None:
    """How to open the experiment's candidates table in the MLflow UI (from its tracking/run.json)."""
    path = Path(exp_dir) / "tracking" / "run.json"
    if not path.exists():
        return None
    doc = files.read_json(path)
    uri, view = doc.get("configured_uri") or doc.get("tracking_uri"), doc.get("candidates_view")
    if not uri or not view:
        return None
    if uri.startswith(("http://", "https://")):
        return view.replace("http://127.0.0.1:5000", uri.rstrip("/"), 1)
    return f"{_program('mlflow')} ui --backend-store-uri {uri}, then open {view}"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_summary(config: dict) -> str:
    """What a finished Snakemake run prints last: per experiment its verdicts and the command to see more."""
    blocks = []
    for name in config["run"]:
        exp_dir = Path(config["results_dir"]) / name
        exp = config["experiments"][name]
        lines = experiment_verdicts(exp_dir, exp) or ["no meta-test results yet"]
        lines.append(f"Details: {show_command(exp_dir)}")
        hint = mlflow_hint(exp_dir)
        if hint:
            lines.append(f"Candidates in MLflow: {hint}")
        blocks.append(f"{name}: " + "\n  ".join(lines))
    return "\n".join(blocks)


def print_run_summary(config: dict) -> None:
    """The Snakefile's ``onsuccess`` handler."""
    try:
        text = run_summary(config)
    except (files.ResultFileError, OSError, KeyError, ValueError) as exc:  # never fail a finished run
        text = f"evomal: could not summarise the run ({exc})"
    print(text, file=sys.stderr, flush=True)
