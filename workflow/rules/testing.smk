# Meta-testing (the learned loss from scratch against the baseline) and transfer to other tasks.


rule meta_test:
    input:
        unpack(learned_losses),
    output:
        table=f"{EXP_DIR}/meta_test.tsv",
        summary=f"{EXP_DIR}/meta_test_summary.tsv",
        curves=f"{EXP_DIR}/meta_test_curves.json",
    log:
        f"{LOGS}/meta_test.log",
    threads: 1
    resources:
        runtime=240,
    params:
        meta_test=lambda w: exp_of(w)["meta_test"],
        training=lambda w: exp_of(w)["training"],
    run:
        from evomal.pipeline.testing import meta_test_stage

        meta_test_stage(
            dict(input.items()),
            output.table,
            output.summary,
            output.curves,
            exp=exp_of(wildcards),
            **LEARNING_OPTIONS,
            log=log[0],
            threads=threads,
        )


rule transfer:
    input:
        unpack(learned_losses),
    output:
        table=f"{EXP_DIR}/transfer.tsv",
        summary=f"{EXP_DIR}/transfer_summary.tsv",
        curves=f"{EXP_DIR}/transfer_curves.json",
    log:
        f"{LOGS}/transfer.log",
    threads: 1
    resources:
        runtime=240,
    params:
        transfer=lambda w: exp_of(w)["transfer"],
        meta_test=lambda w: exp_of(w)["meta_test"],
        training=lambda w: exp_of(w)["training"],
    run:
        from evomal.pipeline.testing import transfer_stage

        transfer_stage(
            dict(input.items()),
            output.table,
            output.summary,
            output.curves,
            exp=exp_of(wildcards),
            **LEARNING_OPTIONS,
            log=log[0],
            threads=threads,
        )
