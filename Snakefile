# EvoMAL: meta-learning symbolic loss functions (Raymond et al., TPAMI 2023) as a Snakemake workflow.
# Quick start: `snakemake` (the default profile in profiles/default -> workflow/profiles/default sets cores,
# in-process jobs and resumption). Rules are thin: each calls one function of the `evomal` package.
import os
import sys

from snakemake.utils import min_version, validate

# a search of G generations is a dependency chain about 6G jobs deep; Snakemake walks it recursively
sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))

min_version("9.0")

# a research pipeline does not phone home (MLflow 3 sends usage telemetry unless told not to)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


configfile: "config/config.yaml"


from evomal.pipeline.locks import clear_stale_locks, record_lock_owner

if (dead := clear_stale_locks()) is not None:
    print(f"evomal: removed the locks of a killed run (pid {dead}); resuming", file=sys.stderr)


onstart:
    record_lock_owner()


from evomal.pipeline.progress import quiet_scheduler

quiet_scheduler(workflow)  # the default profile's --quiet also hides the scheduler's per-job lines


onsuccess:
    from evomal.results.report.verdict import print_run_summary

    print_run_summary(CFG)  # the verdict of each experiment and the `evomal show` command


include: "workflow/rules/common.smk"  # resolves the config: errors name the key and the allowed values


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/search.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/testing.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        final_targets,
    default_target: True
