"""MLflow tracking of a search (DESIGN §4), written from the result files after each stage.

Hierarchy, one MLflow experiment per experiment name::

    pipeline run   one per search: an experiment in one results folder (tag evomal.results_dir)
      generation run   gen_<g>                       (tag mlflow.parentRunId = pipeline run)
        candidate run  <id>, one per individual      (tag mlflow.parentRunId = generation run)

Only :class:`mlflow.tracking.MlflowClient` is used, never the fluent API: tracking jobs run as threads
of one Snakemake process, and the fluent active-run stack is process-global.

Modules: ``store`` (the backend, the lock-retrying client, reading and writing runs), ``payloads``
(what each run holds, from the result files), ``views`` (what the UI shows without clicking: the
candidates view, descriptions, source) and ``sync`` (the tracking rules' entry points).
"""
from evomal.pipeline.contract import DECISIONS
from evomal.results.tracking.payloads import (
    CONFIG_CONFLICT_TAG, DIGEST_TAG, GENERATION_TAG, KEY_TAG, LEVEL_TAG, MAX_PARAM_LENGTH, MAX_TAG_LENGTH,
    PARENT_TAG, PIPELINE_TAG, RESULTS_DIGEST_TAG, RESULTS_DIR_TAG, RUN_NAME_TAG, SEARCH_ID_TAG,
    TRACKING_VERSION, Payload, candidate_digest, candidate_payload, candidate_run_name, fitness_text, flatten,
    generation_summary, loss_shape_png, read_generation, stage_seconds, weighted_infix)
from evomal.results.tracking.store import (
    LOCK_RETRY_SECONDS, MAX_BATCH_ENTITIES, MAX_BATCH_PARAMS_TAGS, PROBE_TIMEOUT, TrackingError,
    artifact_location, backend_errors, check_reachable, ensure_store, experiment_artifact_location,
    experiment_id, find_runs, is_http, make_client, resolve_uri, with_lock_retry)
from evomal.results.tracking.sync import (
    PROGRESS, experiment_record, init_tracking, pipeline_run, results_inputs, search_id, track_generation,
    track_results, tracking_mismatches)
from evomal.results.tracking.views import (
    CANDIDATE_COLUMNS, CANDIDATES_VIEW, apply_views, candidates_view, experiment_tags, runs_page, search_description,
    source_tags)

__all__ = [
    "CONFIG_CONFLICT_TAG", "DECISIONS", "DIGEST_TAG", "GENERATION_TAG", "KEY_TAG", "LEVEL_TAG",
    "LOCK_RETRY_SECONDS", "MAX_BATCH_ENTITIES", "MAX_BATCH_PARAMS_TAGS", "MAX_PARAM_LENGTH", "MAX_TAG_LENGTH",
    "PARENT_TAG", "PIPELINE_TAG", "PROBE_TIMEOUT", "PROGRESS", "RESULTS_DIGEST_TAG", "RESULTS_DIR_TAG",
    "RUN_NAME_TAG", "SEARCH_ID_TAG", "TRACKING_VERSION", "Payload", "TrackingError", "artifact_location",
    "backend_errors", "candidate_digest", "candidate_payload", "check_reachable", "ensure_store",
    "experiment_artifact_location", "experiment_id", "experiment_record", "find_runs", "flatten",
    "generation_summary", "init_tracking", "is_http", "loss_shape_png", "make_client", "pipeline_run",
    "read_generation", "results_inputs", "resolve_uri", "search_id", "stage_seconds", "track_generation",
    "track_results", "tracking_mismatches", "weighted_infix", "with_lock_retry", "CANDIDATE_COLUMNS",
    "CANDIDATES_VIEW", "apply_views", "candidate_run_name", "candidates_view", "experiment_tags", "fitness_text",
    "runs_page", "search_description", "source_tags",
]
