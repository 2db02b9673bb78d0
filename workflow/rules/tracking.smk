# MLflow tracking (DESIGN §4, docs/tracking.md): bookkeeping that only reads compute outputs.
# Nothing but `rule all` consumes these outputs, so a failing tracking backend never blocks or deletes
# compute: the job raises an error naming the tracking URI, Snakemake (keep-going) finishes the compute
# and exits non-zero listing the tracking jobs, and the next run catches up (runs are found by tags and
# updated, never duplicated). `resources: mlflow=1` (a global resource of 1 in the profiles) keeps
# sqlite writers serial.
#
# What re-runs what: the tracking URI is a param of tracking_init, which has no input, so a new URI
# re-runs it and, through run.json, every tracking job (the new backend gets the whole search). A config
# change must not re-track finished generations (raising `generations` extends a run), so the config
# is handed to the functions as an argument, not as a param or an input.


localrules:
    tracking_init,
    track,
    track_results,


rule tracking_init:
    output:
        f"{EXP_DIR}/tracking/run.json",
    log:
        f"{LOGS}/tracking/init.log",
    priority: BOOKKEEPING_PRIORITY
    resources:
        mlflow=1,
    params:
        uri=CFG["tracking_uri"],
    run:
        from evomal.results.tracking import experiment_record, init_tracking

        init_tracking(
            params.uri,
            wildcards.experiment,
            f"{RESULTS}/{wildcards.experiment}",
            config=experiment_record(CFG, wildcards.experiment),
            out=output[0],
            log=log[0],
        )


rule track:
    input:
        population=f"{GEN_DIR}/population.json",
        filter=f"{GEN_DIR}/filter.json",
        table=f"{GEN_DIR}/fitness.tsv",
        archive=f"{GEN_DIR}/archive.json",
        run=f"{EXP_DIR}/tracking/run.json",
    output:
        f"{GEN_DIR}/tracked.json",
    log:
        f"{LOGS}/tracking/gen_{{gen}}.log",
    priority: BOOKKEEPING_PRIORITY
    resources:
        mlflow=1,
    params:
        uri=CFG["tracking_uri"],
    run:
        from evomal.results.tracking import track_generation

        track_generation(
            params.uri,
            wildcards.experiment,
            f"{RESULTS}/{wildcards.experiment}",
            int(wildcards.gen),
            out=output[0],
            log=log[0],
        )


rule track_results:
    input:
        # meta-test tables, transfer tables if the experiment has targets, the best loss of a search
        unpack(tracked_results),
        run=f"{EXP_DIR}/tracking/run.json",
    output:
        f"{EXP_DIR}/tracking/results.json",
    log:
        f"{LOGS}/tracking/results.log",
    priority: BOOKKEEPING_PRIORITY
    resources:
        mlflow=1,
    params:
        uri=CFG["tracking_uri"],
    run:
        from evomal.results.tracking import experiment_record, track_results

        track_results(
            params.uri,
            wildcards.experiment,
            f"{RESULTS}/{wildcards.experiment}",
            config=experiment_record(CFG, wildcards.experiment),
            out=output[0],
            log=log[0],
        )
