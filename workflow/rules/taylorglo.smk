# TaylorGLO (evomal.methods.taylorglo, docs/methods.md): CMA-ES over the 8 parameters of a Taylor
# polynomial loss. A generation is written in EvoMAL's file contract plus the CMA-ES state (cmaes.json),
# so it shares the per-candidate rules compile / optimize / evaluate (evaluation.smk), the finalists
# rule and the tracking and report rules. These rules replace breeding and the filter checkpoint
# (taylorglo_ask), gathering (taylorglo_gather) and the best-loss file (taylorglo_best): they match only
# experiments whose method runs the cmaes_search stage group, and ruleorder makes them win where a GP
# rule could make the same file.
from evomal.pipeline.contract import CMAES_STATE


# sampling and bookkeeping take milliseconds: never worth a cluster job
localrules:
    taylorglo_ask,
    taylorglo_gather,
    taylorglo_best,


ruleorder: taylorglo_ask > population
ruleorder: taylorglo_ask > filter
ruleorder: taylorglo_gather > gather
ruleorder: taylorglo_best > best


def previous_cmaes_state(wildcards):
    """Generation g is sampled only from generation g-1's CMA-ES state."""
    g = int(wildcards.gen)
    return {} if g == 0 else {"state": gen_path(wildcards.experiment, g - 1, CMAES_STATE)}


def taylorglo_shards(wildcards):
    """Every sample is evaluated, dealt round robin (ask_stage): the first min(population, shards) shards."""
    n = min(exp_of(wildcards)["search"]["population"], CFG["shards"])
    return [gen_path(wildcards.experiment, wildcards.gen, f"shards/evaluate_{s}.json") for s in range(n)]


def cmaes_params(wildcards):
    """What sampling depends on; `generations` is left out so raising it extends a finished run."""
    exp = exp_of(wildcards)
    return {"population": exp["search"]["population"], "taylorglo": exp["taylorglo"], "seed": exp["seed"]}


rule taylorglo_ask:
    input:
        unpack(previous_cmaes_state),
    output:
        population=f"{GEN_DIR}/population.json",
        filter=f"{GEN_DIR}/filter.json",
    wildcard_constraints:
        experiment=experiments_running("cmaes_search"),
    params:
        cmaes=cmaes_params,
        shards=CFG["shards"],
    log:
        f"{LOGS}/gen_{{gen}}/population.log",
    run:
        from evomal.pipeline.taylorglo import ask_stage

        ask_stage(output.population, output.filter, wildcards.experiment, exp_of(wildcards), int(wildcards.gen),
                  shards=CFG["shards"], state=input.get("state"), log=log[0])


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
    wildcard_constraints:
        experiment=experiments_running("cmaes_search"),
    log:
        f"{LOGS}/gen_{{gen}}/gather.log",
    run:
        from evomal.pipeline.taylorglo import gather_stage

        gather_stage(input.filter, input.population, output.table, output.archive, output.state,
                     exp=exp_of(wildcards), generation=int(wildcards.gen), prev_archive=input.get("archive"),
                     prev_state=input.get("state"), log=log[0])


rule taylorglo_best:
    input:
        unpack(best_inputs),
    output:
        f"{EXP_DIR}/best/loss.json",
    wildcard_constraints:
        experiment=experiments_running("cmaes_search"),
    params:
        generations=lambda w: last_generation(w.experiment) + 1,
    log:
        f"{LOGS}/best.log",
    run:
        from evomal.pipeline.taylorglo import best_stage

        best_stage(input.archive, f"{RESULTS}/{wildcards.experiment}", output[0], exp=exp_of(wildcards),
                   finalists=input.get("finalists"), log=log[0])
