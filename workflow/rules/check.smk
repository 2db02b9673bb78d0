# Damage a run finds by itself (docs/faults.md, evomal.pipeline.check / repair). Per-candidate files are
# no Snakemake outputs, so the check job of each gathered generation verifies them and recomputes a
# damaged one in place; while the DAG is built, the quick check (digests, no torch) re-queues that job
# when one of them changed or vanished. And every file of the contract is a target, so that a plain
# `snakemake` recreates a deleted one (Snakemake does not recreate a missing intermediate file whose
# consumers are up to date).
from types import SimpleNamespace

from evomal.pipeline.check import recheck_if_damaged
from evomal.pipeline.contract import ARCHIVE, CHECKED, FILTER, FITNESS_TABLE, POPULATION


# verifying takes milliseconds per candidate: never worth a cluster job
localrules:
    check_generation,


def generation_check_inputs(wildcards):
    gen_dir = gen_path(wildcards.experiment, wildcards.gen, "")
    for damage in recheck_if_damaged(gen_dir):  # deletes checked.json: the job runs again
        print(f"evomal: {damage}; its check job recomputes it", file=sys.stderr)
    return {"filter": gen_path(wildcards.experiment, wildcards.gen, FILTER),
            "table": gen_path(wildcards.experiment, wildcards.gen, FITNESS_TABLE)}


def contract_targets(name):
    """Every file of an experiment's contract that a rule makes (experiment_targets adds them)."""
    targets = []
    if has_generations(name):
        for g in range(last_generation(name) + 1):
            targets += [gen_path(name, g, f) for f in (POPULATION, FILTER, FITNESS_TABLE, ARCHIVE, CHECKED)]
    w = SimpleNamespace(experiment=name)
    for group in (report_inputs(w), best_inputs(w) if searches(name) and has_generations(name) else {}):
        for value in group.values():
            targets += [value] if isinstance(value, str) else list(value)
    return targets


rule check_generation:
    input:
        unpack(generation_check_inputs),
    output:
        f"{GEN_DIR}/{CHECKED}",
    threads: 1
    log:
        f"{LOGS}/gen_{{gen}}/check.log",
    run:
        from evomal.pipeline.repair import check_generation_job

        check_generation_job(input.filter, input.table, output[0], exp=exp_of(wildcards), device=CFG["device"],
                             archive=previous_archive(wildcards).get("archive") if early_stop_on(wildcards) else None,
                             log=log[0], threads=threads)
