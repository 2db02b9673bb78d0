# Population initialisation and breeding, filtering (a checkpoint), gathering a generation.


# Priorities (evomal.pipeline.contract): a free core goes to the search's chain first (SEARCH_PRIORITY:
# breeding, filter, shards, finalists, best loss), then to its bookkeeping (BOOKKEEPING_PRIORITY:
# tracking, checks, plots, tables: seconds each, never ahead of the next stage of the search), and the
# test runs (priorities below, workflow/rules/testing.smk) fill the cores left idle: the baseline and
# reference arms need no search, so they train while it runs.


# bookkeeping and breeding take milliseconds: never worth a cluster job
localrules:
    experiment_config,
    population,
    gather,


rule experiment_config:
    output:
        f"{EXP_DIR}/config.yaml",
    log:
        f"{LOGS}/config.log",
    priority: SEARCH_PRIORITY
    params:
        exp=exp_of,
    run:
        from evomal.pipeline.population import write_experiment_config

        write_experiment_config(output[0], experiment=wildcards.experiment, config=CFG, log=log[0])


rule population:
    input:
        unpack(previous_generation),
    output:
        f"{GEN_DIR}/population.json",
    log:
        f"{LOGS}/gen_{{gen}}/population.log",
    priority: SEARCH_PRIORITY
    params:
        search=search_params,
    run:
        from evomal.pipeline.population import make_population

        make_population(
            output[0],
            wildcards.experiment,
            exp_of(wildcards),
            int(wildcards.gen),
            log=log[0],
            **dict(input.items()),
        )


checkpoint filter:
    input:
        unpack(previous_archive),
        population=f"{GEN_DIR}/population.json",
    output:
        f"{GEN_DIR}/filter.json",
    log:
        f"{LOGS}/gen_{{gen}}/filter.log",
    priority: SEARCH_PRIORITY
    threads: 1
    resources:
        runtime=30,
    params:
        filters=lambda w: exp_of(w)["filters"],
        task=lambda w: [exp_of(w)["dataset"], exp_of(w)["model"], exp_of(w)["training"]["lr"]],
        shards=CFG["shards"],
    run:
        from evomal.pipeline.filtering import filter_population

        filter_population(
            input.population,
            output[0],
            exp=exp_of(wildcards),
            shards=CFG["shards"],
            device=CFG["device"],
            prev_archive=input.get("archive"),
            log=log[0],
            threads=threads,
        )


rule gather:
    input:
        unpack(previous_archive),
        filter=f"{GEN_DIR}/filter.json",
        population=f"{GEN_DIR}/population.json",
        shards=evaluated_shards,
    output:
        table=f"{GEN_DIR}/fitness.tsv",
        archive=f"{GEN_DIR}/archive.json",
    log:
        f"{LOGS}/gen_{{gen}}/gather.log",
    priority: SEARCH_PRIORITY
    run:
        from evomal.pipeline.gathering import gather_generation

        gather_generation(
            input.filter,
            input.population,
            output.table,
            output.archive,
            generation=int(wildcards.gen),
            generations=generations(wildcards),
            prev_archive=input.get("archive"),
            log=log[0],
        )
