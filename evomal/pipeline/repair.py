"""The check job of a gathered generation: verify every file, recompute damaged candidate files in place.

Per-candidate files (``gen_<g>/candidates/<id>/...``) are no Snakemake outputs, so Snakemake never sees
them change. This job reads each of them as the stages do (evomal.pipeline.check, the deep check). A
damaged or missing one is deleted and its shard's compile, optimize and evaluate stages run again here,
into scratch manifests: they reuse every intact file by its fingerprint and recompute the deleted ones,
to the same values (the stages are deterministic), so nothing downstream of the generation is stale and
nothing downstream runs again. The job then records the digest of every candidate file in
``checks/gen_<g>.json``; the quick check at the next DAG build compares against them.

A damaged rule output (population.json, filter.json, fitness.tsv, archive.json) cannot be recomputed
here without making everything after it stale: the job fails naming it and the command that repairs it.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.pipeline.check import check_generation, digests
from evomal.pipeline.contract import ARCHIVE, FILTER, active_shards, generation_dir


def _repair_candidates(gen_dir: Path, filter_doc: dict, damaged: list, *, exp: dict, device: str,
                       archive, threads: int, batching: str) -> None:
    from evomal.pipeline.candidates import compile_shard, evaluate_shard, optimize_shard

    shard_of = {c["id"]: c["shard"] for c in filter_doc["candidates"] if c["decision"] == "evaluate"}
    shards = sorted({shard_of[d.path.parent.name] for d in damaged if d.path.parent.name in shard_of})
    for d in damaged:
        d.path.unlink(missing_ok=True)  # a damaged file is recomputed like a missing one
    filter_path = gen_dir / FILTER
    with tempfile.TemporaryDirectory(prefix="evomal-check-") as scratch:
        for s in shards:  # the stages' own shard functions, in their order; manifests go to scratch
            compile_shard(filter_path, s, Path(scratch) / f"compile_{s}.json", exp=exp)
            optimize_shard(filter_path, s, Path(scratch) / f"optimize_{s}.json", exp=exp, device=device,
                           threads=threads, batching=batching)
            evaluate_shard(filter_path, s, Path(scratch) / f"evaluate_{s}.json", exp=exp, device=device,
                           threads=threads, archive=archive, batching=batching)


def check_generation_job(filter_path, table_path, out_path, *, exp: dict, device: str = "cpu",
                         log: str | None = None, threads: int = 1, batching: str = "off") -> list[str]:
    """Verify the generation of ``filter_path``, repair its candidate files, write the check record.
    Returns the repaired files."""
    t0 = time.perf_counter()
    gen_dir = Path(filter_path).parent
    g = int(gen_dir.name.split("_")[-1])
    # what the evaluate stage compares with under early stopping (the evaluate rule's archive input)
    early = (exp.get("early_stop") or {}).get("enabled") and g > 0
    archive = generation_dir(gen_dir.parent, g - 1) / ARCHIVE if early else None
    say = JobLog(log, prefix=f"check {gen_dir.name}: ")
    damage = check_generation(gen_dir, exp)
    outputs = [d for d in damage if not d.per_candidate]
    if outputs:
        raise files.ResultFileError("\n".join(f"damaged results file {d}; to repair it, delete {d.path}, then run "
                                              "`snakemake` (recomputes it and what depends on it)" for d in outputs))
    doc = files.read_json(filter_path)
    if damage:
        for d in damage:
            say(f"{d}: recomputing it", echo=True)
        _repair_candidates(gen_dir, doc, damage, exp=exp, device=device, archive=archive, threads=threads,
                           batching=batching)
        left = check_generation(gen_dir, exp)
        if left:  # e.g. a recomputed fitness that differs from fitness.tsv: not reproducible here
            raise files.ResultFileError(
                "\n".join(f"{d} (after recomputing it)" for d in left)
                + f"\nto recompute the whole generation: rm -r {gen_dir / 'shards'} {table_path}, then `snakemake`")
    repaired = [str(d.path) for d in damage]
    files.write_json(out_path, {"generation": gen_dir.name, "shards": active_shards(doc), "repaired": repaired,
                                "digests": digests(gen_dir, doc)})
    record_seconds(out_path, f"check_{gen_dir.name}", time.perf_counter() - t0)
    say(f"{len(digests(gen_dir, doc))} candidate files verified" + (f", {len(repaired)} recomputed" if repaired else ""))
    return repaired
