# Damage a run finds by itself (docs/faults.md, evomal.pipeline.check / repair). Per-candidate files are
# no Snakemake outputs, so the check job of each gathered generation verifies them and recomputes a
# damaged one in place; while the DAG is built, the quick check (digests, no torch) re-queues that job
# when one of them changed or vanished. And every file of the contract is a target, so that a plain
# `snakemake` recreates a deleted one (Snakemake does not recreate a missing intermediate file whose
# consumers are up to date).
# (Its input function and contract_targets are in common.smk.)
from evomal.pipeline.contract import CHECKS


# verifying takes milliseconds per candidate: never worth a cluster job
localrules:
    check_generation,


rule check_generation:
    input:
        unpack(generation_check_inputs),
    output:
        f"{EXP_DIR}/{CHECKS}/gen_{{gen}}.json",
    log:
        f"{LOGS}/gen_{{gen}}/check.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.pipeline.repair import check_generation_job

        check_generation_job(
            input.filter, input.table, output[0], exp=exp_of(wildcards), log=log[0], **LEARNING_OPTIONS
        )
