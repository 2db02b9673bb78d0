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


from evomal.pipeline.presets import apply_preset, check_config_file

check_config_file("config/config.yaml")  # a YAML error named with file and line (Snakemake's names neither)


configfile: "config/config.yaml"


# `--config preset=<name>`: config/experiments/<name>.yaml under the command line's keys
apply_preset(config, workflow.config_settings.overwrite_config)

# Runs sharing this checkout or the results folder (docs/faults.md, evomal/pipeline/locks.py): the locks
# of killed runs go, a live run's never; each run claims the experiments it writes in onstart.
if workflow.is_main_process:
    from evomal.pipeline.locks import clear_stale_locks, lock_notes

    for note in lock_notes(clear_stale_locks()):
        print(f"evomal: {note}", file=sys.stderr)

HELD = []  # this run's lock record and claims (evomal.pipeline.preflight); released when it ends


onstart:
    from evomal.core.workers import use_workers
    from evomal.pipeline.preflight import start_run

    HELD.append(start_run(workflow, CFG))  # or SystemExit(1) with the reason, before any job
    use_workers(job_workers())  # training jobs of this process run in worker processes (evomal.core.workers)


onerror:
    from evomal.pipeline.preflight import finish_run
    from evomal.pipeline.scheduler import cancel_scheduler_timers

    finish_run(HELD)
    cancel_scheduler_timers()  # the process would wait up to a second for them before it exits


from evomal.pipeline.progress import quiet_scheduler

quiet_scheduler(workflow)  # the default profile's --quiet also hides the scheduler's per-job lines


onsuccess:
    from evomal.pipeline.preflight import finish_run
    from evomal.results.report.verdict import print_run_summary
    from evomal.pipeline.scheduler import cancel_scheduler_timers

    finish_run(HELD)
    print_run_summary(CFG)  # the verdict of each experiment and the `evomal show` command
    cancel_scheduler_timers()


include: "workflow/rules/common.smk"  # resolves the config: errors name the key and the allowed values


validate(CFG, "workflow/schemas/config.schema.yaml")  # the resolved config (numbers given as text converted)

if workflow.is_main_process:  # another configuration's results under the same experiment name
    from evomal.pipeline.preflight import refuse_conflicts

    refuse_conflicts(CFG, CFG["run"])


include: "workflow/rules/search.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/taylorglo.smk"
include: "workflow/rules/ml3.smk"
include: "workflow/rules/testing.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/check.smk"


rule all:
    default_target: True
    input:
        final_targets,
