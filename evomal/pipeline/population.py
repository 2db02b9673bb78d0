"""The run record of an experiment and the population of a generation (initialisation or breeding)."""
from __future__ import annotations

import time

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.gp.anchors import anchor_expressions, anchor_population
from evomal.gp.operators import breed, init_population
from evomal.pipeline.faults import failpoint
from evomal.pipeline.stage_inputs import read_population


def write_experiment_config(out_path, *, experiment: str, config: dict, log: str | None = None) -> None:
    """The resolved config of one experiment, as it ran (DESIGN §3)."""
    import yaml

    t0 = time.perf_counter()
    doc = {"experiment": experiment, "device": config["device"], "shards": config["shards"],
           "tracking_uri": config["tracking_uri"], **config["experiments"][experiment]}
    files.atomic_write_bytes(out_path, yaml.safe_dump(doc, sort_keys=False).encode())
    record_seconds(out_path, "experiment_config", time.perf_counter() - t0)
    JobLog(log)(f"wrote {out_path}")


def _task_kind(exp: dict) -> str:
    from evomal.learning.context import load_task_for
    from evomal.pipeline.stage_inputs import resolve

    return load_task_for(exp["dataset"], seed=exp["seed"], device=resolve("cpu")).kind


def make_population(out_path, experiment: str, exp: dict, generation: int, *, population=None, fitness=None,
                    log: str | None = None) -> None:
    """Generation 0 by ramped half-and-half; generation g > 0 bred only from generation g-1's files."""
    t0 = time.perf_counter()
    s = exp["search"]
    if generation == 0:
        individuals = init_population(s["population"], seed=exp["seed"], init_height=tuple(s["init_height"]),
                                      max_height=s["max_height"])
        if s["anchor"]:
            individuals = anchor_population(individuals, anchor_expressions(_task_kind(exp), s["anchor_forms"]))
    else:
        parents = read_population(population)
        table = files.read_tsv(fitness)
        fitness = {str(r.id): float(r.fitness) for r in table.itertuples()}
        individuals = breed(parents, fitness, seed=exp["seed"], generation=generation, size=s["population"],
                            crossover=s["crossover"], mutation=s["mutation"], tournament=s["tournament"],
                            max_height=s["max_height"], elitism=s["elitism"])
    failpoint("population")
    files.write_json(out_path, {
        "experiment": experiment, "generation": generation, "seed": exp["seed"],
        "individuals": [i.to_dict() for i in individuals],
    })
    record_seconds(out_path, "population", time.perf_counter() - t0)
    JobLog(log)(f"generation {generation}: {len(individuals)} individuals")
