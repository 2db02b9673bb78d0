# Per-shard stages of a generation: loss compilation, unrolled optimisation, evaluation; best-loss selection.


# compiling is milliseconds per candidate, the finalists' table and the best loss read finished files:
# never worth a cluster job
localrules:
    compile,
    finalists,
    best,


rule compile:
    input:
        f"{GEN_DIR}/filter.json",
    output:
        f"{GEN_DIR}/shards/compile_{{shard}}.json",
    log:
        f"{LOGS}/gen_{{gen}}/compile_{{shard}}.log",
    priority: SEARCH_PRIORITY
    threads: 1
    resources:
        runtime=10,
    params:
        method=lambda w: exp_of(w)["method"],
    run:
        from evomal.pipeline.candidates import compile_shard

        compile_shard(
            input[0], int(wildcards.shard), output[0], exp=exp_of(wildcards), recompute=CFG["recompute"], log=log[0]
        )


rule optimize:
    input:
        filter=f"{GEN_DIR}/filter.json",
        compiled=f"{GEN_DIR}/shards/compile_{{shard}}.json",
    output:
        f"{GEN_DIR}/shards/optimize_{{shard}}.json",
    log:
        f"{LOGS}/gen_{{gen}}/optimize_{{shard}}.log",
    priority: SEARCH_PRIORITY
    threads: 1
    resources:
        runtime=120,
    params:
        local_search=lambda w: exp_of(w)["local_search"],
        training=lambda w: exp_of(w)["training"],
    run:
        from evomal.pipeline.candidates import optimize_shard

        optimize_shard(
            input.filter,
            int(wildcards.shard),
            output[0],
            exp=exp_of(wildcards),
            log=log[0],
            threads=threads,
            **STAGE_OPTIONS,
        )


rule evaluate:
    input:
        # early stopping compares candidates with the earlier generations' (none of this when it is off)
        unpack(lambda w: previous_archive(w) if early_stop_on(w) else {}),
        filter=f"{GEN_DIR}/filter.json",
        optimized=f"{GEN_DIR}/shards/optimize_{{shard}}.json",
    output:
        f"{GEN_DIR}/shards/evaluate_{{shard}}.json",
    log:
        f"{LOGS}/gen_{{gen}}/evaluate_{{shard}}.log",
    priority: SEARCH_PRIORITY
    threads: 1
    resources:
        runtime=120,
    params:
        training=evaluate_training_params,
        # only a non-reference measure is a param, so runs made before it existed are not rerun
        fitness=lambda w: non_reference(exp_of(w)["fitness"]),
    run:
        from evomal.pipeline.candidates import evaluate_shard

        evaluate_shard(
            input.filter,
            int(wildcards.shard),
            output[0],
            exp=exp_of(wildcards),
            log=log[0],
            archive=input.get("archive"),
            threads=threads,
            **STAGE_OPTIONS,
        )


# The finalists and the baseline train in parts, one job per shard, so that when the search ends its
# cores train them side by side; the table then only reads the parts' scores.
rule finalist_scores:
    input:
        lambda w: gen_path(w.experiment, last_generation(w.experiment), "archive.json"),
    output:
        f"{EXP_DIR}/{finalist_scores_file('{part}')}",
    log:
        f"{LOGS}/{FINALIST_SCORES}/part_{{part}}.log",
    wildcard_constraints:
        part=r"\d+",
    priority: SEARCH_PRIORITY
    threads: 1
    resources:
        runtime=240,
    params:
        selection=lambda w: exp_of(w)["selection"],
        meta_test=lambda w: exp_of(w)["meta_test"],
        training=lambda w: exp_of(w)["training"],
        parts=lambda w: finalist_parts(exp_of(w), CFG["shards"]),
    run:
        from evomal.pipeline.selection import finalist_scores_stage

        finalist_scores_stage(
            input[0],
            f"{RESULTS}/{wildcards.experiment}",
            output[0],
            exp=exp_of(wildcards),
            part=int(wildcards.part),
            parts=params.parts,
            **LEARNING_OPTIONS,
            log=log[0],
            threads=threads,
        )


rule finalists:
    input:
        archive=lambda w: gen_path(w.experiment, last_generation(w.experiment), "archive.json"),
        scores=finalist_score_files,
    output:
        f"{EXP_DIR}/finalists.tsv",
    log:
        f"{LOGS}/finalists.log",
    priority: SEARCH_PRIORITY
    run:
        from evomal.pipeline.selection import finalists_stage

        finalists_stage(
            input.archive,
            list(input.scores),
            output[0],
            exp=exp_of(wildcards),
            log=log[0],
        )


rule best:
    input:
        unpack(best_inputs),
    output:
        f"{EXP_DIR}/best/loss.json",
    log:
        f"{LOGS}/best.log",
    priority: SEARCH_PRIORITY
    params:
        generations=lambda w: last_generation(w.experiment) + 1,
    run:
        from evomal.pipeline.selection import select_best

        select_best(
            input.archive,
            f"{RESULTS}/{wildcards.experiment}",
            output[0],
            exp=exp_of(wildcards),
            finalists=input.get("finalists"),
            log=log[0],
        )
