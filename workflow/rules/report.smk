# Report layer: plots, report/summary.md, the standalone export of the best loss, and what
# `snakemake --report report.html` shows (outputs flagged with report(), captions in workflow/report/).
# Paths of report() captions and of the `report:` directive are relative to this file.


report: "../report/workflow.rst"


from evomal.pipeline.contract import vector_path  # each plot's SVG twin, written beside its PNG


# all light (seconds, no training): never worth a cluster job
localrules:
    plot_search,
    plot_loss_shape,
    plot_meta_test_curves,
    plot_transfer_curves,
    export_loss,
    report,


rule plot_search:
    input:
        generation_tables,
    output:
        fitness=report(
            f"{REPORT_DIR}/{PLOT_FILES['fitness']}",
            caption="../report/fitness.rst",
            category="{experiment}",
            subcategory="search",
            labels={"experiment": "{experiment}", "figure": "fitness per generation"},
        ),
        decisions=report(
            f"{REPORT_DIR}/{PLOT_FILES['decisions']}",
            caption="../report/decisions.rst",
            category="{experiment}",
            subcategory="search",
            labels={"experiment": "{experiment}", "figure": "filter decisions per generation"},
        ),
        # every plot has a vector twin for papers, written beside the PNG by the same call
        fitness_svg=str(vector_path(f"{REPORT_DIR}/{PLOT_FILES['fitness']}")),
        decisions_svg=str(vector_path(f"{REPORT_DIR}/{PLOT_FILES['decisions']}")),
    log:
        f"{LOGS}/report/plot_search.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.results.report import plot_search

        plot_search(list(input), output.fitness, output.decisions, log=log[0])


rule plot_loss_shape:
    input:
        unpack(learned_losses),
    output:
        report(
            f"{REPORT_DIR}/{PLOT_FILES['loss_shape']}",
            caption="../report/loss_shape.rst",
            category="{experiment}",
            subcategory="learned loss",
            labels={"experiment": "{experiment}", "figure": "learned loss against the baseline"},
        ),
        svg=str(vector_path(f"{REPORT_DIR}/{PLOT_FILES['loss_shape']}")),
    log:
        f"{LOGS}/report/plot_loss_shape.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.results.report import plot_loss_shape

        plot_loss_shape(dict(input.items()), output[0], log=log[0])


rule plot_meta_test_curves:
    input:
        curves=f"{EXP_DIR}/meta_test_curves.json",
        table=f"{EXP_DIR}/meta_test.tsv",
    output:
        report(
            f"{REPORT_DIR}/{PLOT_FILES['meta_test_curves']}",
            caption="../report/meta_test_curves.rst",
            category="{experiment}",
            subcategory="meta-test",
            labels={"experiment": "{experiment}", "figure": "meta-test learning curves"},
        ),
        svg=str(vector_path(f"{REPORT_DIR}/{PLOT_FILES['meta_test_curves']}")),
    log:
        f"{LOGS}/report/plot_meta_test_curves.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.results.report import CURVE_TITLES, plot_learning_curves

        plot_learning_curves(
            input.curves, output[0], per_seed_tsv=input.table, title=CURVE_TITLES["meta_test"], log=log[0]
        )


rule plot_transfer_curves:
    input:
        curves=f"{EXP_DIR}/transfer_curves.json",
        table=f"{EXP_DIR}/transfer.tsv",
    output:
        report(
            f"{REPORT_DIR}/{PLOT_FILES['transfer_curves']}",
            caption="../report/transfer_curves.rst",
            category="{experiment}",
            subcategory="transfer",
            labels={"experiment": "{experiment}", "figure": "transfer learning curves"},
        ),
        svg=str(vector_path(f"{REPORT_DIR}/{PLOT_FILES['transfer_curves']}")),
    log:
        f"{LOGS}/report/plot_transfer_curves.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.results.report import CURVE_TITLES, plot_learning_curves

        plot_learning_curves(
            input.curves, output[0], per_seed_tsv=input.table, title=CURVE_TITLES["transfer"], log=log[0]
        )


rule export_loss:
    input:
        f"{EXP_DIR}/best/loss.json",
    output:
        report(
            f"{EXP_DIR}/best/loss.py",
            caption="../report/loss_py.rst",
            category="{experiment}",
            subcategory="learned loss",
            labels={"experiment": "{experiment}", "figure": "best/loss.py (download)"},
        ),
    log:
        f"{LOGS}/report/export_loss.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.losses.export import write_torch_source

        write_torch_source(input[0], output[0], log=log[0])


rule report:
    input:
        unpack(report_inputs),
    output:
        md=f"{REPORT_DIR}/{SUMMARY_MD}",
        html=report(
            f"{REPORT_DIR}/{SUMMARY_HTML}",
            caption="../report/summary.rst",
            category="{experiment}",
            subcategory="summary",
            labels={"experiment": "{experiment}", "figure": "summary tables"},
        ),
    log:
        f"{LOGS}/report/summary.log",
    priority: BOOKKEEPING_PRIORITY
    run:
        from evomal.results.report import write_summary_from_inputs

        write_summary_from_inputs(
            dict(input.items()), output.md, output.html, experiment=wildcards.experiment, log=log[0]
        )
