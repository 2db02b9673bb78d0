# Opt-in analyses of the learned losses (docs/analysis.md), under results/<experiment>/analysis/:
# learning-rate sensitivity, loss landscapes, primitive usage of the run's searches. Each analysis is
# switched on per experiment (`analysis.<name>.enabled`); `analysis_targets` adds its files to the
# experiment's targets (experiment_targets in common.smk).
# plots and counting take seconds: never worth a cluster job
localrules:
    plot_lr_sweep,
    plot_landscape,
    primitive_stats,
    plot_primitive_stats,


rule lr_sweep:
    input:
        unpack(learned_losses),
    output:
        table=LR_SWEEP_FILES["table"],
        summary=LR_SWEEP_FILES["summary"],
    log:
        f"{LOGS}/analysis/lr_sweep.log",
    threads: 1
    resources:
        runtime=480,
    params:
        lr_sweep=lambda w: exp_of(w)["analysis"]["lr_sweep"],
        meta_test=lambda w: exp_of(w)["meta_test"],
        training=lambda w: exp_of(w)["training"],
    run:
        from evomal.pipeline.analysis import lr_sweep_stage

        lr_sweep_stage(
            dict(input.items()),
            output.table,
            output.summary,
            exp=exp_of(wildcards),
            device=CFG["device"],
            log=log[0],
            threads=threads,
        )


rule plot_lr_sweep:
    input:
        summary=LR_SWEEP_FILES["summary"],
        table=LR_SWEEP_FILES["table"],
    output:
        LR_SWEEP_FILES["plot"],
    log:
        f"{LOGS}/analysis/plot_lr_sweep.log",
    run:
        from evomal.results.report.analysis_plots import plot_lr_sweep

        plot_lr_sweep(input.summary, output[0], table_tsv=input.table, log=log[0])


rule landscape:
    input:
        unpack(learned_losses),
    output:
        LANDSCAPE_FILES["data"],
    log:
        f"{LOGS}/analysis/landscape.log",
    threads: 1
    resources:
        runtime=240,
    params:
        landscape=lambda w: exp_of(w)["analysis"]["landscape"],
        meta_test=lambda w: exp_of(w)["meta_test"],
        training=lambda w: exp_of(w)["training"],
    run:
        from evomal.pipeline.analysis import landscape_stage

        landscape_stage(
            dict(input.items()), output[0], exp=exp_of(wildcards), device=CFG["device"], log=log[0], threads=threads
        )


rule plot_landscape:
    input:
        LANDSCAPE_FILES["data"],
    output:
        plot_1d=LANDSCAPE_FILES["plot_1d"],
        plot_2d=LANDSCAPE_FILES["plot_2d"],
    log:
        f"{LOGS}/analysis/plot_landscape.log",
    run:
        from evomal.results.report.analysis_plots import plot_landscape

        plot_landscape(input[0], output.plot_1d, output.plot_2d, log=log[0])


rule primitive_stats:
    input:
        primitive_inputs,
    output:
        PRIMITIVE_FILES["table"],
    log:
        f"{LOGS}/analysis/primitive_stats.log",
    run:
        from evomal.pipeline.analysis import primitive_stats_stage

        primitive_stats_stage(primitive_sources(wildcards.experiment), output[0], log=log[0])


rule plot_primitive_stats:
    input:
        PRIMITIVE_FILES["table"],
    output:
        PRIMITIVE_FILES["plot"],
    log:
        f"{LOGS}/analysis/plot_primitive_stats.log",
    run:
        from evomal.results.report.analysis_plots import plot_primitive_stats

        plot_primitive_stats(input[0], output[0], log=log[0])
