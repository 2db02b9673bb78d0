"""Early stopping of hopeless candidates during the partial training (a deviation from the paper; off by
default; config key ``early_stop``, docs/design.md §1.6).

Rule (median stopping, as in Google Vizier's "median stopping rule"): at each checkpoint, a share of
``training.steps``, the candidate's validation metric is compared with the metrics that the candidates
already scored reached at the same checkpoint; if it is worse (higher) than their median, training stops
and the candidate gets fitness +inf, so it can never win selection, with the reason recorded. Ties do
not stop. The rule applies only once ``min_scored`` candidates have a metric at that checkpoint.

"Already scored" is deterministic, so the same config and seed give the same files: the candidates of
earlier generations (the archive) and the candidates before this one in the same shard job, in shard
order. Candidates of other shards of the same generation run at the same time and are not compared.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

RULES = ("median",)


@dataclass(frozen=True)
class EarlyStop:
    """The configured rule: checkpoints as shares of the training steps."""

    checkpoints: tuple[float, ...] = (0.25, 0.5)
    rule: str = "median"
    min_scored: int = 3

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"early_stop.rule: unknown rule {self.rule!r}; known: {', '.join(RULES)}")
        if not self.checkpoints or any(not 0 < c < 1 for c in self.checkpoints):
            raise ValueError(f"early_stop.checkpoints: shares strictly between 0 and 1, got {self.checkpoints}")

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> "EarlyStop | None":
        """The rule of an experiment's ``early_stop`` section, or None when it is off (the default)."""
        if not cfg or not cfg.get("enabled", False):
            return None
        return cls(tuple(sorted(float(c) for c in cfg["checkpoints"])), cfg["rule"], int(cfg["min_scored"]))

    def steps(self, total: int) -> tuple[int, ...]:
        """Checkpoint steps of a training of ``total`` steps (never the last step: that one is the fitness)."""
        return tuple(sorted({s for c in self.checkpoints if 0 < (s := max(1, round(c * total))) < total}))


class ScoreBoard:
    """Validation metrics at the checkpoints of the candidates scored so far, and the stopping verdict."""

    def __init__(self, rule: EarlyStop, total_steps: int) -> None:
        self.rule = rule
        self.steps = rule.steps(total_steps)
        self.scores: dict[int, list[float]] = {s: [] for s in self.steps}

    def add(self, checkpoints: Iterable) -> None:
        """Record one scored candidate's ``(step, metric)`` pairs (those at other steps are ignored)."""
        for step, value in checkpoints:
            if int(step) in self.scores:
                self.scores[int(step)].append(float(value))

    def verdict(self, step: int, value: float) -> str | None:
        """Why a candidate with ``value`` at checkpoint ``step`` stops, or None if it trains on."""
        scored = self.scores.get(step, [])
        if len(scored) < self.rule.min_scored:
            return None
        median = statistics.median(scored)
        if value > median:
            return (f"stopped early at step {step}: metric {value:.6g} worse than the median {median:.6g} "
                    f"of {len(scored)} scored candidates")
        return None

    def snapshot(self) -> dict[str, list[float]]:
        """What a verdict depends on (goes into the candidate's fingerprint)."""
        return {str(step): list(values) for step, values in self.scores.items()}
