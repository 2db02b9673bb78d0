"""What the partial-training fitness measures (DESIGN §1.6, configurable beyond the reference).

The reference scores one training run by its validation metric after the last step. One point of one
seed is noisy; averaging the last few evaluations, and optionally a second seed, predicts the full run
better. The defaults (one point, one seed) reproduce the reference exactly.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

#: the reference's measure (the schema's defaults of the `fitness` block)
REFERENCE = {"average_last": 1, "seeds": 1, "eval_every": None}


def non_reference(cfg: dict | None) -> dict:
    """The keys of a `fitness` block that differ from the reference: what a rerun must depend on (empty
    for the reference, so runs made before the measure was configurable keep their params and
    fingerprints). Torch-free: the Snakefile calls it at parse time."""
    return {k: v for k, v in (cfg or {}).items() if REFERENCE.get(k, object()) != v}


@dataclass(frozen=True)
class FitnessMeasure:
    average_last: int = 1
    seeds: int = 1
    eval_every: int | None = None

    @classmethod
    def from_config(cls, cfg: dict | None) -> "FitnessMeasure":
        cfg = cfg or {}
        return cls(int(cfg.get("average_last", 1)), int(cfg.get("seeds", 1)), cfg.get("eval_every"))

    @property
    def is_reference(self) -> bool:
        return not non_reference(dataclasses.asdict(self))

    def eval_every_for(self, steps: int) -> int | None:
        """Steps between validation points: as configured, else a tenth of the run when averaging."""
        if self.eval_every is not None:
            return self.eval_every
        return max(1, steps // 10) if self.average_last > 1 else None

    def seeds_for(self, seed: int) -> list[int]:
        """The experiment seed first (the reference's run), then seeds derived from it."""
        from evomal.learning.devices import derive_seed

        return [seed] + [derive_seed(seed, "fitness", i) & 0x7FFFFFFF for i in range(1, self.seeds)]

    def value(self, curves: list[list[tuple[int, float, float]]]) -> float:
        """Mean over seeds of the mean validation metric at the last ``average_last`` points."""
        per_seed = []
        for curve in curves:
            # the step-0 point is the untrained network: never part of the fitness
            points = [c[2] for c in curve if c[0] > 0][-self.average_last:]
            if not points or not all(math.isfinite(p) for p in points):
                return math.inf
            per_seed.append(sum(points) / len(points))
        return sum(per_seed) / len(per_seed)
