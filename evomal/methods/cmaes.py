"""CMA-ES (the ``cma`` library) with its state kept as data, so that a killed search resumes exactly.

The state after a generation (``CMAESState``, written as JSON in that generation's folder) holds the
settings and every generation told so far (samples and fitness), with the distribution it led to (mean,
step size, covariance) for reading and as a check. The library's strategy object is rebuilt from it by
replaying ``ask``/``tell`` from the seed: the samples come from our own seeded numpy Generator (the
``randn`` option), so the replay reproduces every sample and, with the same fitness values, every update
bit for bit; a replay that disagrees with the stored samples or distribution (another ``cma`` version)
stops with an error naming the file. Replaying G generations of 8 parameters costs milliseconds, and it
uses the library's public interface only: no pickle, no private attributes.

No global random state is touched: ``seed`` is nan (cma seeds numpy's global generator otherwise) and
file logging is off.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from evomal.core import files
from evomal.learning.devices import derive_seed


@dataclass(frozen=True)
class CMAESSettings:
    """What the strategy depends on; ``mean``: every coordinate of the initial mean (the reference: 0)."""

    dimension: int
    popsize: int
    sigma: float
    seed: int
    mean: float = 0.0


@dataclass
class CMAESState:
    """The strategy after ``len(generations)`` told generations (``solutions``, ``fitness`` each)."""

    settings: dict
    generations: list[dict] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    sigma: float = math.nan
    covariance: list[list[float]] = field(default_factory=list)
    iterations: int = 0
    evaluations: int = 0
    library: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict, source) -> "CMAESState":
        try:
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise files.ResultFileError(f"corrupted results file {source}: not a CMA-ES state ({exc})") from None


def _strategy(settings: CMAESSettings):
    import cma

    rng = np.random.default_rng(derive_seed(settings.seed, "cma-es"))
    options = {"popsize": settings.popsize, "seed": math.nan, "randn": lambda *shape: rng.standard_normal(shape),
               "verbose": -9, "verb_log": 0, "verb_disp": 0,
               # a fixed number of generations: never stop early (the workflow asks for every generation)
               "tolfun": 0, "tolx": 0, "tolfunhist": 0, "tolflatfitness": 10 ** 9, "tolstagnation": 10 ** 9}
    return cma.CMAEvolutionStrategy([float(settings.mean)] * settings.dimension, float(settings.sigma), options)


def _fitness_values(fitness) -> list[float]:
    """NaN counts as the worst value, as inf does (cma ranks the samples)."""
    return [math.inf if math.isnan(float(v)) else float(v) for v in fitness]


def restore(state: CMAESState | None, settings: CMAESSettings, source="CMA-ES state"):
    """The strategy object after the generations of ``state`` (None: a new search)."""
    es = _strategy(settings)
    if state is None:
        return es
    if state.settings != asdict(settings):
        raise files.ResultFileError(f"{source}: made with CMA-ES settings {state.settings}, the config now gives "
                                    f"{asdict(settings)}; delete the experiment's gen_* folders to start again")
    for g, gen in enumerate(state.generations):
        samples = es.ask()
        if not np.array_equal(np.asarray(samples), np.asarray(gen["solutions"], dtype=float)):
            raise files.ResultFileError(f"{source}: replaying generation {g} gives other samples than the stored "
                                        f"ones (cma {_version()}; the state was written by cma {state.library})")
        es.tell(samples, _fitness_values(gen["fitness"]))
    if state.generations and (es.mean.tolist() != state.mean or float(es.sigma) != state.sigma):
        raise files.ResultFileError(f"{source}: the replayed distribution differs from the stored one "
                                    f"(cma {_version()}; the state was written by cma {state.library})")
    return es


def _version() -> str:
    import cma

    return cma.__version__


def ask(state: CMAESState | None, settings: CMAESSettings, source="CMA-ES state") -> list[list[float]]:
    """The samples of the next generation."""
    return [list(map(float, x)) for x in restore(state, settings, source).ask()]


def tell(state: CMAESState | None, settings: CMAESSettings, solutions, fitness, source="CMA-ES state") -> CMAESState:
    """The state after telling the next generation's ``fitness``; ``solutions`` must be that generation's
    samples (as ``ask`` gave them)."""
    es = restore(state, settings, source)
    samples = es.ask()
    if not np.array_equal(np.asarray(samples), np.asarray(solutions, dtype=float)):
        raise files.ResultFileError(f"{source}: the generation's samples are not those the state gives")
    values = _fitness_values(fitness)
    es.tell(samples, values)
    told = [] if state is None else list(state.generations)
    told.append({"solutions": [list(map(float, x)) for x in samples], "fitness": values})
    return CMAESState(settings=asdict(settings), generations=told, mean=es.mean.tolist(), sigma=float(es.sigma),
                      covariance=np.asarray(es.sm.covariance_matrix if hasattr(es.sm, "covariance_matrix")
                                            else es.C).tolist(),
                      iterations=int(es.countiter), evaluations=int(es.countevals), library=_version())


def read_state(path) -> CMAESState:
    return CMAESState.from_dict(files.read_json(path), path)


def write_state(path, state: CMAESState) -> None:
    files.write_json(path, state.to_dict())
