"""Summary statistics of per-seed test metrics: mean, std and a paired test against the baseline."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = ["target", "method", "n", "mean", "std", "baseline_mean", "mean_difference",
                   "t_statistic", "p_value", "wins", "losses"]


def paired_test(values: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test over seeds (same seeds, same settings); nan when undefined."""
    from scipy import stats

    diff = values - baseline
    if len(diff) < 2 or not np.all(np.isfinite(diff)):
        return math.nan, math.nan
    if np.allclose(diff, diff[0]):  # zero variance: t is undefined, the difference is exact
        return math.nan, (1.0 if diff[0] == 0 else 0.0)
    res = stats.ttest_rel(values, baseline)
    return float(res.statistic), float(res.pvalue)


def summarize(per_seed: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """One row per (target, method): n, mean, std (ddof=1) and the paired test vs ``baseline``.

    ``per_seed`` has columns target, method, seed, test_metric (lower is better).
    """
    rows = []
    for target, group in per_seed.groupby("target", sort=False):
        base = group[group["method"] == baseline].set_index("seed")["test_metric"]
        for method, g in group.groupby("method", sort=False):
            vals = g.set_index("seed")["test_metric"]
            finite = np.isfinite(vals.to_numpy(float)).all()  # a diverged seed is inf: no spread to report
            if len(vals) < 2 or not finite:
                std = math.nan
            else:  # identical seeds have no spread, not the rounding noise of their mean
                std = 0.0 if vals.nunique() == 1 else float(vals.std(ddof=1))
            row = {"target": target, "method": method, "n": len(vals), "mean": float(vals.mean()), "std": std,
                   "baseline_mean": math.nan, "mean_difference": math.nan, "t_statistic": math.nan,
                   "p_value": math.nan, "wins": 0, "losses": 0}
            common = vals.index.intersection(base.index)
            if method != baseline and len(common):
                v, b = vals.loc[common].to_numpy(float), base.loc[common].to_numpy(float)
                t, p = paired_test(v, b)
                row.update(baseline_mean=float(b.mean()), mean_difference=float((v - b).mean()),
                           t_statistic=t, p_value=p, wins=int((v < b).sum()), losses=int((v > b).sum()))
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
