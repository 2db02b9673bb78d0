# Meta-testing (the learned loss from scratch against the baseline) and transfer to other tasks.
# Each (target, arm) trains in a job of its own: the baseline and reference arms need no search, so
# they fill the cores the search leaves idle; meta_test and transfer only put the arms into tables.
# Priorities below the search's and its bookkeeping's: the learned arms first, then the longest (run_priority).


# tables of finished runs: pandas, no training
localrules:
    meta_test,
    transfer,


rule test_run:
    input:
        unpack(test_run_inputs),
    output:
        f"{EXP_DIR}/{test_run_file('{target}', '{arm}')}",
    log:
        f"{LOGS}/{TEST_RUNS}/{{target}}-{{arm}}.log",
    wildcard_constraints:
        target=rf"{META_TEST_TARGET}|{TRANSFER_PREFIX}\d+",
        arm=rf"{BASELINE_ARM}|{REFERENCES_ARM}|{LEARNED_PREFIX}[A-Za-z0-9_.-]+",
    priority: run_priority
    threads: 1
    resources:
        runtime=240,
    params:
        run=test_run_params,
    run:
        from evomal.pipeline.testing import arm_runs_stage

        arm_runs_stage(
            output[0],
            exp=exp_of(wildcards),
            target=wildcards.target,
            arm=wildcards.arm,
            loss=input.get("loss"),
            **LEARNING_OPTIONS,
            log=log[0],
            threads=threads,
        )


rule meta_test:
    input:
        lambda w: test_run_files(w, "meta_test"),
    output:
        table=f"{EXP_DIR}/meta_test.tsv",
        summary=f"{EXP_DIR}/meta_test_summary.tsv",
        curves=f"{EXP_DIR}/meta_test_curves.json",
    log:
        f"{LOGS}/meta_test.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.pipeline.testing import meta_test_stage

        meta_test_stage(list(input), output.table, output.summary, output.curves, log=log[0])


rule transfer:
    input:
        unpack(transfer_run_files),
    output:
        table=f"{EXP_DIR}/transfer.tsv",
        summary=f"{EXP_DIR}/transfer_summary.tsv",
        curves=f"{EXP_DIR}/transfer_curves.json",
    log:
        f"{LOGS}/transfer.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.pipeline.testing import transfer_stage

        transfer_stage(
            {name: list(paths) for name, paths in input.items()},
            output.table,
            output.summary,
            output.curves,
            log=log[0],
        )
