"""Gathering a generation: its fitness table and the archive the next generation filters against."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.pipeline.contract import TABLE_COLUMNS, candidate_dir
from evomal.pipeline.faults import failpoint
from evomal.pipeline.progress import generation_line
from evomal.pipeline.stage_inputs import read_archive, read_population


def gather_generation(filter_path, population_path, out_table, out_archive, *, generation: int,
                      generations: int | None = None, prev_archive=None, log: str | None = None) -> dict:
    """Fitness table of a generation and the cumulative archive that the next generation filters against.

    Prints the search's progress line (``generations``: how many the search has, for ``gen g/G`` and the ETA).
    """
    t0 = time.perf_counter()
    doc = files.read_json(filter_path)
    gen_dir = Path(filter_path).parent
    population = {i.id: i for i in read_population(population_path)}
    archive = read_archive(prev_archive)
    known = {e["id"]: e for e in archive["entries"]}
    rows, new_entries = [], []
    for rec in doc["candidates"]:
        fit, reason = math.inf, rec["reason"]
        if rec["decision"] == "evaluate":
            fdoc = files.read_json(candidate_dir(gen_dir, rec["id"]) / "fitness.json")
            fit = files.number(fdoc["fitness"])
            reason = fdoc["reason"] or rec["reason"]
        rows.append({"rec": rec, "fitness": fit, "reason": reason})
    here = {r["rec"]["id"]: r for r in rows}
    for r in rows:  # fitness reuse is resolved once this generation's evaluations are known
        src = r["rec"]["reuse_of"]
        if src is not None:
            r["fitness"] = here[src]["fitness"] if src in here else files.number(known[src]["fitness"])
    table = []
    for r in rows:
        rec, ind = r["rec"], population[r["rec"]["id"]]
        table.append({"id": rec["id"], "expression": rec["expression"], "origin": ind.origin,
                      "parents": " ".join(ind.parents), "key": rec["key"] or "", "decision": rec["decision"],
                      "reason": r["reason"] or "", "reuse_of": rec["reuse_of"] or "",
                      "fitness": r["fitness"]})
        if rec["decision"] in ("evaluate", "rejected"):
            new_entries.append({"id": rec["id"], "generation": generation, "expression": rec["expression"],
                                "key": rec["key"], "decision": rec["decision"], "fitness": r["fitness"],
                                "signature": rec["signature"]})
    frame = pd.DataFrame(table, columns=TABLE_COLUMNS)
    failpoint("gather")
    files.write_tsv(out_table, frame)
    entries = archive["entries"] + new_entries
    finite = [e for e in entries if e["decision"] == "evaluate" and math.isfinite(files.number(e["fitness"]))]
    best = min(finite, key=lambda e: (files.number(e["fitness"]), e["generation"]), default=None)
    files.write_json(out_archive, {"generation": generation, "entries": entries, "best": best})
    counts = frame["decision"].value_counts().to_dict()
    summary = {"generation": generation, "best_so_far": None if best is None else files.number(best["fitness"]),
               "best_expression": None if best is None else best["expression"],
               "generation_best": float(frame["fitness"].min()), "counts": counts,
               "seconds": time.perf_counter() - t0}
    record_seconds(out_table, "gather", summary["seconds"])
    JobLog(log, echo=True)(generation_line(
        generation=generation, generations=generations, best=summary["best_so_far"],
        expression=summary["best_expression"], evaluated=int(counts.get("evaluate", 0)), population=len(frame),
        exp_dir=gen_dir.parent))
    return summary
