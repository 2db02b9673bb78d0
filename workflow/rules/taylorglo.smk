# TaylorGLO (evomal.methods.taylorglo, docs/methods.md): CMA-ES over the 8 parameters of a Taylor
# polynomial loss. A generation is written in EvoMAL's file contract plus the CMA-ES state (cmaes.json),
# so it shares the per-candidate rules compile / optimize / evaluate (evaluation.smk), the finalists
# rule and the tracking and report rules. These rules replace breeding and the filter checkpoint
# (taylorglo_ask), gathering (taylorglo_gather) and the best-loss file (taylorglo_best): they match only
# experiments whose method runs the cmaes_search stage group, and ruleorder makes them win where a GP
# rule could make the same file.


# sampling and bookkeeping take milliseconds: never worth a cluster job
localrules:
    taylorglo_ask,
    taylorglo_gather,
    taylorglo_best,


ruleorder: taylorglo_ask > population
ruleorder: taylorglo_ask > filter
ruleorder: taylorglo_gather > gather
ruleorder: taylorglo_best > best


rule taylorglo_ask:
    input:
        unpack(previous_cmaes_state),
    output:
        population=f"{GEN_DIR}/population.json",
        filter=f"{GEN_DIR}/filter.json",
    log:
        f"{LOGS}/gen_{{gen}}/population.log",
    wildcard_constraints:
        experiment=experiments_running("cmaes_search"),
    priority: SEARCH_PRIORITY
    params:
        cmaes=cmaes_params,
        shards=CFG["shards"],
    run:
        from evomal.pipeline.taylorglo import ask_stage

        ask_stage(*output, exp_of(wildcards), shards=CFG["shards"], log=log[0], **dict(input.items()))


rule taylorglo_gather:
    input:
        unpack(previous_archive),
        unpack(previous_cmaes_state),
        filter=f"{GEN_DIR}/filter.json",
        population=f"{GEN_DIR}/population.json",
        shards=taylorglo_shards,
    output:
        table=f"{GEN_DIR}/fitness.tsv",
        archive=f"{GEN_DIR}/archive.json",
        state=f"{GEN_DIR}/{CMAES_STATE}",
    log:
        f"{LOGS}/gen_{{gen}}/gather.log",
    wildcard_constraints:
        experiment=experiments_running("cmaes_search"),
    priority: SEARCH_PRIORITY
    run:
        from evomal.pipeline.taylorglo import gather_stage

        gather_stage(
            *output, exp=exp_of(wildcards), generation=int(wildcards.gen), log=log[0], **dict(input.items())
        )


rule taylorglo_best:
    input:
        unpack(best_inputs),
    output:
        f"{EXP_DIR}/best/loss.json",
    log:
        f"{LOGS}/best.log",
    wildcard_constraints:
        experiment=experiments_running("cmaes_search"),
    priority: SEARCH_PRIORITY
    params:
        generations=lambda w: last_generation(w.experiment) + 1,
    run:
        from evomal.pipeline.taylorglo import best_stage

        best_stage(
            f"{RESULTS}/{wildcards.experiment}", output[0], exp=exp_of(wildcards), log=log[0], **dict(input.items())
        )
