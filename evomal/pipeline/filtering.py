"""The filter stage (DESIGN §1.5): every individual of a generation gets a decision and its reason."""
from __future__ import annotations

import time

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.core.workers import in_worker
from evomal.gp.expressions import ExpressionError, parse
from evomal.learning.context import use_threads
from evomal.pipeline.contract import DECISIONS
from evomal.pipeline.faults import failpoint
from evomal.pipeline.stage_inputs import learning_setup, read_archive, read_population


@in_worker
def filter_population(population_path, out_path, *, exp: dict, shards: int, device: str = "cpu",
                      prev_archive=None, log: str | None = None, threads: int = 1) -> None:
    """DESIGN §1.5: symbolic equivalence, rejection protocol, gradient equivalence, in that order."""
    use_threads(threads)
    from evomal.gp.canonical import canonical_key
    from evomal.learning.filters import gradient_signature, rejection_test, signature_is_valid, signatures_match

    t0 = time.perf_counter()
    say = JobLog(log)
    flt = exp["filters"]
    individuals = read_population(population_path)
    archive = read_archive(prev_archive)["entries"]
    by_key = {e["key"]: e for e in archive}
    signed = [e for e in archive if e.get("signature") is not None and e["decision"] == "evaluate"]

    dev, task, build, settings = learning_setup(exp, device)

    records: list[dict] = []
    seen: dict[str, dict] = {}
    evaluated_here: list[dict] = []
    for ind in individuals:
        rec = {"id": ind.id, "expression": ind.expression, "key": None, "key_method": None,
               "decision": None, "reason": None, "reuse_of": None, "shard": None, "signature": None,
               "rejection_improvement": None, "rejection_measure": None}
        records.append(rec)
        try:
            tree = parse(ind.expression)
        except ExpressionError as exc:
            raise ExpressionError(f"{population_path}: individual {ind.id}: {exc}") from None
        missing = {"y", "f"} - tree.variables()
        if missing:
            rec.update(decision="invalid", reason=f"expression lacks {' and '.join(sorted(missing))} "
                       "(hand-edited population files are not repaired)")
            continue
        if flt["symbolic"]:
            ck = canonical_key(tree)
            rec.update(key=ck.key, key_method=ck.method)
        else:  # the reference's rule: exact prefix strings only
            rec.update(key=str(tree), key_method="text")
        if rec["key"] in by_key:
            prior = by_key[rec["key"]]
            rec.update(decision="equivalent", reuse_of=prior["id"],
                       reason=f"same canonical form as {prior['id']} (generation {prior['generation']})")
            continue
        if rec["key"] in seen:
            rec.update(decision="equivalent", reuse_of=seen[rec["key"]]["id"],
                       reason=f"same canonical form as {seen[rec['key']]['id']} in this generation")
            continue
        seen[rec["key"]] = rec
        if flt["rejection"]:
            rej = rejection_test(tree, task, build(exp["seed"]), samples=flt["rejection_samples"],
                                 steps=flt["rejection_steps"], lr=settings.lr, seed=exp["seed"],
                                 measure=flt["rejection_measure"])
            rec.update(rejection_improvement=rej.improvement, rejection_measure=rej.measure)
            if not rej.accepted:
                rec.update(decision="rejected", reason=rej.reason)
                continue
        if flt["gradient"]:
            sig = gradient_signature(tree, task.kind, task.num_outputs, seed=exp["seed"])
            if not signature_is_valid(sig):
                rec.update(decision="rejected", reason="non-finite gradient of the loss at the probe inputs")
                continue
            rec["signature"] = list(sig)
            match = next((e for e in signed + evaluated_here
                          if signatures_match(sig, e["signature"], flt["gradient_tolerance"])), None)
            if match is not None:
                rec.update(decision="gradient_equivalent", reuse_of=match["id"],
                           reason=f"per-sample gradient norms match {match['id']} within "
                                  f"{flt['gradient_tolerance']}")
                continue
        rec.update(decision="evaluate", reason="new loss")
        evaluated_here.append(rec)
    failpoint("filter")
    for i, rec in enumerate(evaluated_here):
        rec["shard"] = i % shards
    counts = {d: sum(r["decision"] == d for r in records) for d in DECISIONS}
    files.write_json(out_path, {"generation": files.read_json(population_path)["generation"],
                                "shards": shards, "counts": counts, "candidates": records})
    record_seconds(out_path, "filter", time.perf_counter() - t0)
    say(f"filter: {counts}")
