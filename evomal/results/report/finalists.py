"""The finalists of a search (finalists.tsv) as a table and a sentence, for the summary and `evomal show`.

Every validation comparison shows its uncertainty: mean ± sample std over the validation seeds.
"""
from __future__ import annotations

import pandas as pd

from evomal.pipeline.contract import BASELINE, learned_beats_baseline
from evomal.results.report.tables import _fmt


def _mean_std(row) -> str:
    return f"{_fmt(row['validation_mean'])} ± {_fmt(row['validation_std'], 2)}"


def finalists_view(finalists: pd.DataFrame) -> pd.DataFrame:
    """One row per finalist: search fitness, validation mean ± std, and which one was selected."""
    seeds = [c for c in finalists.columns if c.startswith("seed_")]
    return pd.DataFrame({
        "finalist": finalists["id"],
        "expression": [e if isinstance(e, str) and e else "(the task's own loss)" for e in finalists["expression"]],
        "search fitness": [_fmt(v) if pd.notna(v) else "-" for v in finalists["search_fitness"]],
        f"validation (mean ± std, {len(seeds)} seeds)": [_mean_std(r) for _, r in finalists.iterrows()],
        "selected": ["yes" if s else "" for s in finalists["selected"].astype(bool)],
    })


def finalists_sentence(finalists: pd.DataFrame) -> str:
    """Whether the chosen loss beat the baseline on validation, in one plain sentence."""
    n = len([c for c in finalists.columns if c.startswith("seed_")])
    base = finalists[finalists["id"] == BASELINE].iloc[0]
    chosen = finalists[finalists["selected"].astype(bool)]
    if chosen.empty:
        return "No learned loss reached the finalists."
    chosen = chosen.iloc[0]
    numbers = f"{_mean_std(chosen)} against {_mean_std(base)}, mean ± std over {n} validation seeds"
    if learned_beats_baseline(finalists):
        return f"The selected loss {chosen['id']} beats the baseline on validation ({numbers})."
    return (f"No learned loss beats the baseline on validation (the best, {chosen['id']}: {numbers}); "
            "the best learned one is meta-tested anyway.")
