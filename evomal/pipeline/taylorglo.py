"""TaylorGLO's stages (DESIGN §1.8): one CMA-ES generation per generation folder, in EvoMAL's file contract.

* ask: generation g-1's CMA-ES state -> generation g's population.json (one individual per sample, with
  its θ) and filter.json (every sample is evaluated: θ vectors never repeat, and the symbolic filters
  have no expression to work on), the samples dealt to the shards round robin;
* the per-candidate stages are EvoMAL's (evomal.pipeline.candidates): compile writes the Taylor loss
  file through the method, optimize records that there is no local search, evaluate trains;
* gather: fitness.tsv and archive.json as a GP generation has them, and the state after telling
  CMA-ES the fitness (``cmaes.json``), which is all that generation g+1 needs;
* best: the chosen loss (the best fitness, or the selected finalist) as a Taylor best/loss.json.

So tracking, reports and ``evomal show`` read a TaylorGLO search as they read a GP one.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.methods.cmaes import ask, read_state, tell, write_state
from evomal.methods.taylorglo import ORIGIN, cmaes_settings
from evomal.pipeline.contract import DECISIONS, TABLE_COLUMNS, candidate_dir
from evomal.pipeline.faults import failpoint
from evomal.pipeline.progress import generation_line
from evomal.pipeline.stage_inputs import read_archive

REASON = "CMA-ES sample (TaylorGLO evaluates every sample)"


def individual_id(generation: int, slot: int) -> str:
    return f"g{generation}-{slot:03d}"  # as GP individuals are named (evomal.gp.operators)


def ask_stage(out_population, out_filter, exp: dict, *, shards: int, state=None, log: str | None = None) -> None:
    """Sample a generation from the previous generation's ``state`` file (None for generation 0). The
    folders name the experiment and the generation (results/<experiment>/gen_<g>/population.json)."""
    from evomal.losses.taylor import describe

    t0 = time.perf_counter()
    gen_dir = Path(out_population).absolute().parent
    experiment, generation = gen_dir.parent.name, int(gen_dir.name.removeprefix("gen_"))
    settings = cmaes_settings(exp)
    samples = ask(None if state is None else read_state(state), settings, source=state)
    individuals, records = [], []
    for slot, theta in enumerate(samples):
        cid = individual_id(generation, slot)
        individuals.append({"id": cid, "expression": describe(theta), "parents": [], "origin": ORIGIN,
                            "repaired": False, "theta": theta})
        records.append({"id": cid, "expression": describe(theta), "key": None, "key_method": None,
                        "decision": "evaluate", "reason": REASON, "reuse_of": None, "shard": slot % shards,
                        "signature": None, "rejection_improvement": None, "theta": theta})
    failpoint("population")
    files.write_json(out_population, {"experiment": experiment, "generation": generation, "seed": exp["seed"],
                                      "individuals": individuals})
    counts = {d: len(records) if d == "evaluate" else 0 for d in DECISIONS}
    files.write_json(out_filter, {"generation": generation, "shards": shards, "counts": counts, "candidates": records})
    record_seconds(out_population, "population", time.perf_counter() - t0)
    JobLog(log)(f"generation {generation}: {len(samples)} CMA-ES samples (sigma {settings.sigma})")


def gather_stage(out_table, out_archive, out_state, *, exp: dict, generation: int, filter, population, shards=(),
                 archive=None, state=None, log: str | None = None) -> dict:
    """Fitness table and archive of a generation, and the CMA-ES state after telling it the fitness.

    Inputs by the rule's names: ``filter`` and ``population`` of this generation, the evaluate ``shards``
    (only waited for), ``archive`` and ``state`` of the previous generation (None for generation 0).
    """
    t0 = time.perf_counter()
    filter_path, population_path, prev_archive, prev_state = filter, population, archive, state
    doc = files.read_json(filter_path)
    gen_dir = Path(filter_path).parent
    individuals = files.read_json(population_path)["individuals"]
    rows, entries = [], []
    for rec in doc["candidates"]:
        fdoc = files.read_json(candidate_dir(gen_dir, rec["id"]) / "fitness.json")
        fit = files.number(fdoc["fitness"])
        rows.append({"id": rec["id"], "expression": rec["expression"], "origin": ORIGIN, "parents": "", "key": "",
                     "decision": rec["decision"], "reason": fdoc["reason"] or rec["reason"], "reuse_of": "",
                     "fitness": fit})
        entries.append({"id": rec["id"], "generation": generation, "expression": rec["expression"], "key": None,
                        "decision": rec["decision"], "fitness": fit, "signature": None})
    fitness = {r["id"]: r["fitness"] for r in rows}
    state = tell(None if prev_state is None else read_state(prev_state), cmaes_settings(exp),
                 [ind["theta"] for ind in individuals], [fitness[ind["id"]] for ind in individuals],
                 source=prev_state or population_path)
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    failpoint("gather")
    files.write_tsv(out_table, frame)
    archive = read_archive(prev_archive)["entries"] + entries
    finite = [e for e in archive if math.isfinite(files.number(e["fitness"]))]
    best = min(finite, key=lambda e: (files.number(e["fitness"]), e["generation"]), default=None)
    files.write_json(out_archive, {"generation": generation, "entries": archive, "best": best})
    write_state(out_state, state)  # last: its presence means the generation is complete
    record_seconds(out_table, "gather", time.perf_counter() - t0)
    JobLog(log, echo=True)(generation_line(
        generation=generation, generations=exp["search"]["generations"],
        best=None if best is None else files.number(best["fitness"]), expression=None if best is None else
        best["expression"], evaluated=len(rows), population=len(rows), exp_dir=gen_dir.parent)
        + f"  sigma {state.sigma:.3g}")
    return {"generation": generation, "best": best, "sigma": state.sigma}


def best_stage(results_dir, out_path, *, exp: dict, archive, finalists=None, log: str | None = None) -> None:
    """The Taylor loss to meta-test: the selected finalist (``finalists``: finalists.tsv), or the best
    search fitness of the last generation's ``archive``."""
    from evomal.losses.families import write_document
    from evomal.losses.taylor import document
    from evomal.pipeline.selection import selected_candidate  # the selection rule EvoMAL's best loss follows

    t0 = time.perf_counter()
    best, extra, cdir = selected_candidate(archive, results_dir, finalists)
    # the sample's θ as drawn: there is no local search (optimized.pt holds the same values)
    cand = files.read_json(cdir / "loss.json")
    kind, theta = cand["kind"], cand["weights"]
    failpoint("best")
    write_document(out_path, document(kind, theta, id=best["id"], generation=best["generation"],
                                      fitness=files.number(best["fitness"]), method=exp["method"], **extra))
    record_seconds(out_path, "best", time.perf_counter() - t0)
    JobLog(log, echo=True)(f"best loss {best['id']} (fitness {best['fitness']}): {best['expression']}")
