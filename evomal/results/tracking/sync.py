"""Bringing the MLflow runs of a search in line with its result files: the tracking rules' entry points.

Idempotence. Every run carries deterministic tags (``evomal.key``, ``evomal.pipeline``,
``evomal.level``) and is looked up by them before one is created; a run is marked complete by
``evomal.digest`` (a hash of everything logged to it) and status FINISHED, both written last.
Tracking a stage again therefore:

* skips a run whose digest matches (nothing is written);
* finishes an incomplete run (crash between calls): params are logged only when absent or equal,
  metrics are relogged with the same step and timestamp (the run's start time), which the store
  deduplicates, tags and artifacts are overwritten;
* replaces a candidate run whose content changed (its generation was recomputed): params are
  immutable in MLflow and metric points cannot be deleted, so the old run is deleted (soft, it stays
  restorable until ``mlflow gc``) and a new one is logged. Generation and pipeline runs are kept;
  their changed metrics are logged with the current time, so the new value is the latest;
* deletes candidate runs whose individual no longer exists in the files.
"""
from __future__ import annotations

import functools
import hashlib
import math
import time
from pathlib import Path
from typing import Callable

from evomal.core import files
from evomal.core.joblog import JobLog
from evomal.methods.registry import method_searches
from evomal.pipeline import contract
from evomal.pipeline.faults import failpoint
from evomal.results.tracking.payloads import (
    CONFIG_CONFLICT_TAG, GENERATION_TAG, KEY_TAG, LEVEL_TAG, MAX_PARAM_LENGTH, PARENT_TAG, PIPELINE_TAG,
    RESULTS_DIGEST_TAG, RESULTS_DIR_TAG, RUN_NAME_TAG, SEARCH_ID_TAG, Payload, _best_loss_artifacts,
    _best_loss_tags, _clip, _digest, _file_digest, _finite, _generation_payload, _read_optional_tsv,
    _results_metrics, _text, candidate_digest, candidate_payload, flatten, read_generation, stage_seconds)
from evomal.results.tracking.views import apply_views, runs_page
from evomal.results.tracking.store import (
    _changed, _complete, _keep_one, _log, _metrics, _new_params, _new_points, _RetryingClient, _sqlite_path,
    _tag_filter, _write_artifacts, backend_errors, check_reachable, ensure_store, experiment_id, find_runs,
    make_client, resolve_uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- finding the pipeline run
def search_id(results_dir: str | Path) -> str:
    """Lookup key of a pipeline run: a hash of the absolute results folder (any characters allowed)."""
    return hashlib.sha256(str(Path(results_dir).resolve()).encode()).hexdigest()[:20]


def pipeline_run(client, experiment_name: str, results_dir: str | Path) -> str:
    """Run id of the search in ``results_dir`` (the experiment's folder), created if absent.

    Found by the hash of the absolute folder, so resuming, rerunning a stage or forcing the whole
    workflow reuses it; a search in another folder gets its own run. ``client``: an MlflowClient.
    """
    if not isinstance(client, _RetryingClient):
        client = _RetryingClient(client)
    folder = str(Path(results_dir).resolve())
    exp_id = experiment_id(client, experiment_name, client.tracking_uri)
    sid = search_id(folder)
    run = _keep_one(client, find_runs(client, [exp_id], _tag_filter({SEARCH_ID_TAG: sid})))
    if run is not None:
        return run.info.run_id
    tags = {SEARCH_ID_TAG: sid, RESULTS_DIR_TAG: folder, LEVEL_TAG: "pipeline",
            KEY_TAG: experiment_name}
    return client.create_run(exp_id, tags=tags, run_name=experiment_name).info.run_id


# --------------------------------------------------------------------------- tracking a generation
def _sync_candidate(client, exp_id: str, existing, digest: str, parent: dict[str, str],
                    build: Callable[[], Payload]) -> str:
    """Bring one candidate run in line with the files; ``build`` (costly: plots) runs only if needed."""
    if existing is not None:
        if existing.data.tags.get(PARENT_TAG) != parent[PARENT_TAG]:  # its generation run was recreated
            client.set_tag(existing.info.run_id, PARENT_TAG, parent[PARENT_TAG])
        if _complete(existing, digest):
            return "unchanged"
    payload = build()
    payload.tags.update(parent)
    if existing is not None:
        todo, conflicts = _new_params(existing.data.params, payload.params)
        if not conflicts and not _changed(existing, digest):  # interrupted: finish it
            _log(client, existing.info.run_id, payload, timestamp=existing.info.start_time, params=todo)
            return "updated"
        client.delete_run(existing.info.run_id)  # content changed: params and points cannot be replaced
    identity = (RUN_NAME_TAG, KEY_TAG, LEVEL_TAG, PIPELINE_TAG, GENERATION_TAG, PARENT_TAG)
    run = client.create_run(exp_id, tags={k: payload.tags[k] for k in identity})
    _log(client, run.info.run_id, payload, timestamp=run.info.start_time, params=payload.params)
    return "replaced" if existing is not None else "created"


def _generation_run(client, exp_id: str, pipeline_id: str, experiment: str, generation: int):
    identity = {PIPELINE_TAG: pipeline_id, LEVEL_TAG: "generation", GENERATION_TAG: str(generation)}
    run = _keep_one(client, find_runs(client, [exp_id], _tag_filter(identity)))
    if run is None:
        tags = {**identity, RUN_NAME_TAG: f"gen_{generation}", KEY_TAG: f"{experiment}/gen_{generation}",
                PARENT_TAG: pipeline_id}
        run = client.create_run(exp_id, tags=tags)
    return run


def _candidate_runs(client, exp_id: str, pipeline_id: str, generation: int) -> dict[str, list]:
    """Active candidate runs of a generation by key (found by tags, whichever generation run holds them)."""
    identity = {PIPELINE_TAG: pipeline_id, LEVEL_TAG: "candidate", GENERATION_TAG: str(generation)}
    by_key: dict[str, list] = {}
    for run in find_runs(client, [exp_id], _tag_filter(identity)):
        by_key.setdefault(run.data.tags.get(KEY_TAG), []).append(run)
    return by_key


#: generation metrics also logged on the pipeline run, one point per generation (the search's progress)
PROGRESS = ("best", "median", "best_so_far", "n_finite")


def track_generation(tracking_uri: str, experiment_name: str, exp_dir: str | Path, generation: int, *,
                     out: str | Path | None = None, log: str | None = None) -> dict:
    """Log generation ``generation`` of the search in ``exp_dir``: a generation run and one run per
    candidate (params, tags, metrics, artifacts), idempotently. Writes the summary to ``out``."""
    t0 = time.perf_counter()
    say = JobLog(log, prefix=f"track gen {generation}: ")
    uri = resolve_uri(tracking_uri)
    exp_dir = Path(exp_dir)
    gen_dir = exp_dir / f"gen_{generation}"
    rows, frecs, individuals = read_generation(gen_dir)
    archive_path = gen_dir / "archive.json"
    archive = files.read_json(archive_path) if archive_path.exists() else None
    done = dict.fromkeys(("created", "updated", "unchanged", "replaced", "deleted"), 0)
    with backend_errors(uri, f"tracking generation {generation} of {experiment_name}", say):
        check_reachable(uri)
        client = make_client(uri)
        pipeline = client.get_run(pipeline_run(client, experiment_name, exp_dir))
        exp_id, pid = pipeline.info.experiment_id, pipeline.info.run_id
        gen_run = _generation_run(client, exp_id, pid, experiment_name, generation)
        gid = gen_run.info.run_id
        existing = _candidate_runs(client, exp_id, pid, generation)
        wanted = set()
        for row in rows:
            frec, ind = frecs.get(row["id"], {}), individuals.get(row["id"], {})
            digest = candidate_digest(row, frec, ind, gen_dir)
            key = f"{experiment_name}/gen_{generation}/{row['id']}"
            wanted.add(key)
            build = functools.partial(candidate_payload, row, frec, ind, gen_dir, experiment=experiment_name,
                                      generation=generation, digest=digest)
            what = _sync_candidate(client, exp_id, _keep_one(client, existing.get(key, [])), digest,
                                   {PARENT_TAG: gid, PIPELINE_TAG: pid}, build)
            done[what] += 1
            failpoint("track")  # after a logged candidate: a resumed job must not log it twice
        for key, runs in existing.items():
            if key not in wanted:  # the individual is gone from the files (generation recomputed)
                for run in runs:
                    client.delete_run(run.info.run_id)
                    done["deleted"] += 1
        gen_payload = _generation_payload(rows, archive, gen_dir, generation)
        if not _complete(gen_run, gen_payload.digest):
            progress = [(f"search/{k}", v, generation) for k, v, _ in gen_payload.metrics if k in PROGRESS]
            if _changed(gen_run, gen_payload.digest):
                # completed once with other content (recomputed): only the new values, at the current
                # time so that they are the latest
                stamp = gen_stamp = _now_ms()
                progress = _new_points(client, pipeline, progress)
                gen_payload.metrics = _new_points(client, gen_run, gen_payload.metrics)
            else:  # first time, or finishing an interrupted job: the store drops repeated points
                stamp, gen_stamp = pipeline.info.start_time, gen_run.info.start_time
            client.log_batch(pid, metrics=_metrics(progress, stamp))
            todo, _ = _new_params(gen_run.data.params, gen_payload.params)
            _log(client, gid, gen_payload, timestamp=gen_stamp, params=todo)
    result = {"tracking_uri": uri, "experiment": experiment_name, "experiment_id": exp_id,
              "pipeline_run_id": pid, "generation_run_id": gid, "generation": generation,
              "candidates": len(rows), **done, "seconds": round(time.perf_counter() - t0, 3)}
    say(f"{len(rows)} candidates: " + ", ".join(f"{k} {v}" for k, v in done.items() if v)
        + f" in {result['seconds']:.2f}s")
    if out is not None:
        files.write_json(out, result)
        # tracking/timings/: gen_<g>/timings/ holds the generation's stage timings, logged on its run
        files.record_seconds(out, f"track_gen_{generation}", time.perf_counter() - t0, folder=exp_dir / "tracking")
    return result


# --------------------------------------------------------------------------- the pipeline run
def _log_config(client, run, config: dict, say: Callable[..., None]) -> None:
    """The experiment's resolved config as params (flattened) and as the artifact config.yaml.

    Params are immutable: a value that changed since the run was created keeps its first value; its
    key is added to the tag ``evomal.config_changed`` and config.yaml shows the current config.
    """
    import yaml
    from mlflow.entities import Param, RunTag

    wanted = {k: _clip(v, MAX_PARAM_LENGTH) for k, v in flatten(config).items()}
    todo, conflicts = _new_params(run.data.params, wanted)
    if not todo and not conflicts:  # as logged already
        return
    previous = set(filter(None, run.data.tags.get(CONFIG_CONFLICT_TAG, "").split(",")))
    tags = [RunTag(CONFIG_CONFLICT_TAG, ",".join(sorted(previous | set(conflicts))))] if conflicts else []
    if conflicts:
        say(f"config changed since the run was created (params keep the first values): {', '.join(conflicts)}")
    _write_artifacts(client, run.info.run_id, {"config.yaml": yaml.safe_dump(config, sort_keys=False).encode()})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in todo.items()], tags=tags)


def init_tracking(tracking_uri: str, experiment_name: str, exp_dir: str | Path, *, config: dict | None = None,
                  out: str | Path | None = None, log: str | None = None) -> dict:
    """Create the store and the search's pipeline run, with ``config`` (the experiment's resolved
    config) as params. Run by one job before any other tracking job of the experiment."""

    t0 = time.perf_counter()
    say = JobLog(log, prefix="tracking init: ")
    uri = resolve_uri(tracking_uri)
    exp_dir = Path(exp_dir)
    with backend_errors(uri, f"creating the pipeline run of {experiment_name}", say):
        ensure_store(uri)
        client = make_client(uri)
        run = client.get_run(pipeline_run(client, experiment_name, exp_dir))
        if config is not None:
            _log_config(client, run, config, say)
        apply_views(client, run, experiment_name, config, exp_dir)
    result = {"tracking_uri": uri, "configured_uri": tracking_uri, "experiment": experiment_name,
              "experiment_id": run.info.experiment_id, "run_id": run.info.run_id,
              "results_dir": str(exp_dir.resolve()), "candidates_view": runs_page(run.info.experiment_id)}
    say(f"pipeline run {run.info.run_id} in experiment {experiment_name} ({uri})")
    if out is not None:
        files.write_json(out, result)
        files.record_seconds(out, "tracking_init", time.perf_counter() - t0)  # tracking/timings/, not exp timings
    return result


def experiment_record(config: dict, experiment: str) -> dict:
    """An experiment's resolved config as logged on its pipeline run (the content of its config.yaml)."""
    return {"device": config["device"], "shards": config["shards"], **config["experiments"][experiment]}


def results_inputs(exp_dir: str, exp: dict) -> dict[str, str]:
    """Result files the track_results rule reads, for an experiment's resolved config ``exp``."""
    return contract.results_inputs(exp_dir, exp, searches=method_searches(exp["method"]))


def _finalist_metrics(table) -> list[tuple[str, float, int]]:
    """finalists/<id>/validation_mean and _std, and 1 on the selected one (finalists.tsv)."""
    if table is None:
        return []
    points = []
    for row in table.itertuples():
        for column in ("validation_mean", "validation_std"):
            value = _finite(getattr(row, column))
            if value is not None:
                points.append((f"finalists/{row.id}/{column}", value, 0))
        if bool(row.selected):
            points.append((f"finalists/{row.id}/selected", 1.0, 0))
    return points


def track_results(tracking_uri: str, experiment_name: str, exp_dir: str | Path, *, config: dict | None = None,
                  out: str | Path | None = None, log: str | None = None) -> dict:
    """Log meta-test and transfer results (per seed and method, and summaries) and the best loss on
    the pipeline run; the tables are uploaded as artifacts under ``results/``. ``config``, the
    current resolved config, is recorded as in init_tracking (it may have changed since)."""
    t0 = time.perf_counter()
    say = JobLog(log, prefix="track results: ")
    uri = resolve_uri(tracking_uri)
    exp_dir = Path(exp_dir)
    tables = {name: exp_dir / name for name in ("meta_test.tsv", "meta_test_summary.tsv", "transfer.tsv",
                                                "transfer_summary.tsv", "finalists.tsv") if (exp_dir / name).exists()}
    points = []
    for prefix in ("meta_test", "transfer"):
        points += _results_metrics(_read_optional_tsv(exp_dir / f"{prefix}.tsv"),
                                   _read_optional_tsv(exp_dir / f"{prefix}_summary.tsv"), prefix)
    points += _finalist_metrics(_read_optional_tsv(exp_dir / "finalists.tsv"))
    points += [(k, v, 0) for k, v in stage_seconds(exp_dir).items()]
    best_path = exp_dir / "best" / "loss.json"
    tags = _best_loss_tags(best_path) if best_path.exists() else {}
    if _finite(tags.get("best.fitness")) is not None:
        points.append(("best/fitness", float(tags["best.fitness"]), 0))
    payload = Payload(metrics=points, tags=tags, digest=_digest(
        points, tags, {n: files.file_digest(p) for n, p in tables.items()}, _file_digest(best_path)))
    with backend_errors(uri, f"tracking the results of {experiment_name}", say):
        check_reachable(uri)
        client = make_client(uri)
        run = client.get_run(pipeline_run(client, experiment_name, exp_dir))
        if config is not None:
            _log_config(client, run, config, say)
        state = "unchanged"
        if not _complete(run, payload.digest, RESULTS_DIGEST_TAG):
            payload.artifacts = {f"results/{n}": p for n, p in tables.items()}
            if best_path.exists():
                payload.artifacts.update(_best_loss_artifacts(best_path))
            changed = _changed(run, payload.digest, RESULTS_DIGEST_TAG)
            if changed:  # e.g. a rerun meta-test: only values that differ get a new (latest) point
                payload.metrics = _new_points(client, run, payload.metrics)
            _log(client, run.info.run_id, payload, timestamp=_now_ms() if changed else run.info.start_time,
                 params={}, digest_tag=RESULTS_DIGEST_TAG)
            state = "updated" if changed else "created"
    result = {"tracking_uri": uri, "experiment": experiment_name, "experiment_id": run.info.experiment_id,
              "pipeline_run_id": run.info.run_id, "metrics": len(points), "state": state,
              "seconds": round(time.perf_counter() - t0, 3)}
    say(f"{len(points)} metrics ({state}) in {result['seconds']:.2f}s")
    if out is not None:
        files.write_json(out, result)
        files.record_seconds(out, "track_results", time.perf_counter() - t0)  # tracking/timings/
    return result


# --------------------------------------------------------------------------- checking
def tracking_mismatches(tracking_uri: str, experiment_name: str, exp_dir: str | Path,
                        generations: list[int] | None = None) -> list[str]:
    """Differences between the MLflow tree and the result files (empty when they match).

    A relative sqlite URI and ``exp_dir`` are taken relative to the current directory: pass absolute
    ones when checking a run made elsewhere (the pipeline run is found by the absolute results folder).

    Checks one pipeline run for the folder, one generation run per tracked generation under it, and
    exactly one candidate run per row of fitness.tsv under that with expression, decision and fitness
    as in the table; and the meta-test per-seed metrics when meta_test.tsv exists.
    """
    exp_dir = Path(exp_dir)
    db = _sqlite_path(resolve_uri(tracking_uri))
    if db is not None and not db.exists():  # MLflow would create an empty one
        return [f"no MLflow database at {db.resolve()} (a relative URI is relative to {Path.cwd()})"]
    client = make_client(tracking_uri)
    problems: list[str] = []
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return [f"no MLflow experiment {experiment_name!r} at {tracking_uri}"]
    pipes = find_runs(client, [exp.experiment_id], _tag_filter({SEARCH_ID_TAG: search_id(exp_dir)}))
    if len(pipes) != 1:
        return [f"{len(pipes)} pipeline runs for {exp_dir.resolve()} (expected 1)"]
    pid = pipes[0].info.run_id
    if generations is None:
        generations = sorted(int(p.name[4:]) for p in exp_dir.glob("gen_*") if (p / "fitness.tsv").exists())
    for g in generations:
        gens = find_runs(client, [exp.experiment_id], _tag_filter(
            {PIPELINE_TAG: pid, LEVEL_TAG: "generation", GENERATION_TAG: str(g)}))
        if len(gens) != 1 or gens[0].data.tags.get(PARENT_TAG) != pid:
            problems.append(f"gen_{g}: {len(gens)} generation runs under the pipeline run (expected 1)")
            continue
        rows, _, _ = read_generation(exp_dir / f"gen_{g}")
        cands = find_runs(client, [exp.experiment_id], f"tags.`{PARENT_TAG}` = '{gens[0].info.run_id}'")
        by_id: dict[str, list] = {}
        for run in cands:
            by_id.setdefault(run.data.params.get("id"), []).append(run)
        if len(cands) != len(rows):
            problems.append(f"gen_{g}: {len(cands)} candidate runs for {len(rows)} rows of fitness.tsv")
        for row in rows:
            runs = by_id.get(row["id"], [])
            if len(runs) != 1:
                problems.append(f"gen_{g}/{row['id']}: {len(runs)} runs (expected 1)")
                continue
            run = runs[0]
            fitness = files.number(row["fitness"]) if _text(row["fitness"]) else math.inf
            logged = run.data.metrics.get("fitness")
            if run.data.params.get("expression") != _clip(row["expression"], MAX_PARAM_LENGTH):
                problems.append(f"gen_{g}/{row['id']}: expression {run.data.params.get('expression')!r} "
                                f"!= {row['expression']!r}")
            if run.data.tags.get("decision") != row["decision"]:
                problems.append(f"gen_{g}/{row['id']}: decision {run.data.tags.get('decision')!r} "
                                f"!= {row['decision']!r}")
            ok = (logged is None and run.data.tags.get("fitness") == "inf") if not math.isfinite(fitness) \
                else (logged is not None and math.isclose(logged, fitness, rel_tol=1e-12, abs_tol=1e-15))
            if not ok:
                problems.append(f"gen_{g}/{row['id']}: fitness {logged!r} (tag {run.data.tags.get('fitness')!r}) "
                                f"!= {fitness!r}")
    table = _read_optional_tsv(exp_dir / "meta_test.tsv")
    if table is not None:
        for r in table.to_dict("records"):
            key = f"meta_test/{r['target']}/{r['method']}/test_{r['metric']}"
            x = _finite(r["test_metric"])
            if x is None:
                continue
            history = {(m.step, m.value) for m in client.get_metric_history(pid, key)}
            if not any(step == int(r["seed"]) and math.isclose(v, x, rel_tol=1e-12) for step, v in history):
                problems.append(f"meta_test: {key} at seed {r['seed']} is not {x}")
    return problems
