"""The MLflow backend: URIs, store creation, reachability probe, lock-retrying client, reading and
writing runs.

Failures never cost compute: tracking rules only read compute outputs and nothing but ``rule all``
depends on theirs. A backend that is unreachable (probed with a short timeout before any MLflow call)
or fails makes the job raise :class:`TrackingError` naming the URI; with ``keep-going`` Snakemake
finishes all compute, exits non-zero listing the tracking jobs, and the next run catches up.
"""
from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from evomal.results.tracking.payloads import DIGEST_TAG, MAX_TAG_LENGTH, Payload, _clip


# one request of log_batch (MLflow splits bigger batches, and then the digest must go last)
MAX_BATCH_ENTITIES = 1000
MAX_BATCH_PARAMS_TAGS = 100

#: Bounded wait for a locked sqlite database (parallel writers), on top of sqlite's own busy timeout.
LOCK_RETRY_SECONDS = 120.0
#: Connect/read timeout of the reachability probe of an HTTP tracking server.
PROBE_TIMEOUT = 3.0


class TrackingError(RuntimeError):
    """Tracking failed; compute outputs are untouched and the next snakemake run catches up."""


# --------------------------------------------------------------------------- URIs and the store
def _sqlite_path(tracking_uri: str) -> Path | None:
    """Database file of a ``sqlite:///`` URI (relative to the working directory), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def resolve_uri(tracking_uri: str) -> str:
    """Absolute form of a relative sqlite URI, so that the store does not depend on a later cwd."""
    path = _sqlite_path(tracking_uri)
    if path is None or path.is_absolute():
        return tracking_uri
    query = tracking_uri.split("?", 1)[1] if "?" in tracking_uri else None
    resolved = f"sqlite:///{path.resolve()}"
    return resolved if query is None else f"{resolved}?{query}"


def is_http(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a sqlite database (``<db dir>/mlflow-artifacts``); servers choose their own."""
    path = _sqlite_path(tracking_uri)
    if path is None:
        return None
    return (path.resolve().parent / "mlflow-artifacts").as_uri()


def experiment_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """``<db dir>/mlflow-artifacts/<experiment>`` for sqlite (names are [A-Za-z0-9_.-]+), else None."""
    root = artifact_location(tracking_uri)
    return None if root is None else f"{root}/{experiment_name}"


def check_reachable(tracking_uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise TrackingError within ``timeout`` seconds when an HTTP tracking server does not answer.

    MLflow's own client retries a refused connection for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    read from the process environment at each request), and changing that environment would change
    it for every thread of the Snakemake process, so the probe is done here, once, without retries.
    Any HTTP answer, even an error status, counts as reachable: the probe only tests the connection.
    """
    if not is_http(tracking_uri):
        return
    import requests

    url = tracking_uri.rstrip("/") + "/health"
    try:
        requests.get(url, timeout=(timeout, timeout))
    except requests.exceptions.SSLError:
        return  # the host answered; MLflow may use its own certificates (MLFLOW_TRACKING_SERVER_CERT_PATH)
    except requests.exceptions.RequestException as exc:
        raise TrackingError(
            f"MLflow tracking server {tracking_uri} is unreachable ({type(exc).__name__}: {exc}). "
            f"{_CATCH_UP}") from None


_CATCH_UP = ("Compute results are not affected; start the server or fix tracking_uri, then run "
             "snakemake again to catch up the tracking")


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def with_lock_retry(fn: Callable, *args, deadline: float = LOCK_RETRY_SECONDS, **kwargs):
    """Call ``fn``; on sqlite "database is locked", wait (exponential backoff with jitter) and retry
    for up to ``deadline`` seconds, then raise the last error (tenacity).

    Every call made here is safe to repeat: params are equal, metrics carry the same step and
    timestamp, tags and artifacts are overwritten.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    # the jitter has its own RNG: tenacity's random waits draw from the global one, which population
    # jobs in other threads seed for DEAP (evomal.gp.operators), and a draw here would change a breed
    rng = random.Random()
    backoff = wait_exponential(multiplier=0.05, max=5.0)
    retrying = Retrying(retry=retry_if_exception(_is_locked), stop=stop_after_delay(deadline), reraise=True,
                        wait=lambda state: backoff(state) * (0.5 + rng.random()))
    return retrying(fn, *args, **kwargs)


class _RetryingClient:
    """An MlflowClient whose every method retries on a locked sqlite database."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *a, **k: with_lock_retry(attr, *a, **k)


def make_client(tracking_uri: str):
    """A lock-retrying MlflowClient for ``tracking_uri`` (the URI's store is cached by MLflow)."""
    from mlflow.tracking import MlflowClient

    return _RetryingClient(MlflowClient(tracking_uri=resolve_uri(tracking_uri)))


@contextlib.contextmanager
def backend_errors(uri: str, doing: str, say: Callable[..., None] | None = None):
    """Turn a failing backend into TrackingError naming the URI, and warn in the job log.

    Only MLflow and HTTP errors are translated: a damaged result file keeps its own message.
    """
    from mlflow.exceptions import MlflowException
    import requests

    try:
        yield
    except TrackingError as exc:
        if say:
            say(f"WARNING: {exc}", echo=True)
        raise
    except (MlflowException, requests.exceptions.RequestException) as exc:
        message = (f"MLflow tracking to {uri} failed while {doing}: {type(exc).__name__}: "
                   f"{_clip(str(exc), 2000)}. {_CATCH_UP}")
        if say:
            say(f"WARNING: {message}", echo=True)
        raise TrackingError(message) from exc


def ensure_store(tracking_uri: str) -> str:
    """Create the backend before parallel jobs log: the sqlite file with its migrations (MLflow runs
    them under its own inter-process lock), or probe a server. Returns the resolved URI."""
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    path = _sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _create_sqlite_store(uri, path)
    with backend_errors(uri, "creating the store"):
        make_client(uri).search_experiments(max_results=1)
    return uri


def _create_sqlite_store(uri: str, path: Path) -> None:
    """A new sqlite store is created and migrated under a temporary name, then linked into place.

    MLflow's migrations take seconds and commit table by table: a run killed meanwhile would leave a
    half-migrated database that every later run fails to open ("table ... already exists"). Killed
    here, it leaves a stray ``.mlflow.db.*.tmp`` beside it instead, and the next run starts afresh.
    """
    import os

    from evomal.core.files import make_temp

    # named after this process (a later run removes it if a kill leaves it), mode as for any file (not 0600)
    fd, tmp = make_temp(path)
    os.close(fd)  # an empty file is an empty sqlite database
    try:
        tmp_uri = f"sqlite:///{tmp}" + (f"?{uri.split('?', 1)[1]}" if "?" in uri else "")
        with backend_errors(uri, "creating the store"):
            make_client(tmp_uri).search_experiments(max_results=1)
        try:
            os.link(tmp, path)  # never replaces a store that another process created meanwhile
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


# --------------------------------------------------------------------------- runs: find, write
def experiment_id(client, name: str, tracking_uri: str) -> str:
    """Id of the MLflow experiment ``name``, created (artifacts beside a sqlite DB) or restored."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=experiment_artifact_location(tracking_uri, name))
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":  # deleted in the UI: its name is still taken
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def find_runs(client, experiment_ids: list[str], filter_string: str) -> list:
    """All active runs matching ``filter_string`` (every page), oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _tag_filter(tags: dict[str, str]) -> str:
    """Filter on exact tag values; our keys and values never contain quotes."""
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def _keep_one(client, runs: list) -> Any | None:
    """The run to keep among duplicates (complete first, then oldest); the others are deleted."""
    if not runs:
        return None
    ranked = sorted(runs, key=lambda r: (DIGEST_TAG not in r.data.tags, r.info.start_time))
    for extra in ranked[1:]:
        client.delete_run(extra.info.run_id)
    return ranked[0]


def _new_params(existing: dict[str, str], wanted: dict[str, str]) -> tuple[dict, list[str]]:
    """Params to log (absent ones) and keys whose logged value differs (immutable: not logged)."""
    todo = {k: v for k, v in wanted.items() if k not in existing}
    conflicts = sorted(k for k, v in wanted.items() if k in existing and existing[k] != v)
    return todo, conflicts


def _write_artifacts(client, run_id: str, artifacts: dict[str, Path | bytes], artifact_path=None) -> None:
    """One upload of a temporary folder holding every artifact (copies or bytes)."""
    if not artifacts:
        return
    with tempfile.TemporaryDirectory(prefix="evomal-artifacts-") as tmp:
        for name, content in artifacts.items():
            dest = Path(tmp) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                shutil.copyfile(content, dest)
        client.log_artifacts(run_id, tmp, artifact_path)


def _log(client, run_id: str, payload: Payload, *, timestamp: int, params: dict[str, str],
         digest_tag: str = DIGEST_TAG) -> None:
    """Artifacts, then one log_batch (metrics, params, tags), with the completion digest last."""
    from mlflow.entities import Param, RunTag

    _write_artifacts(client, run_id, payload.artifacts)
    metrics = _metrics(payload.metrics, timestamp)
    plist = [Param(k, v) for k, v in params.items()]
    tags = [RunTag(k, _clip(v, MAX_TAG_LENGTH)) for k, v in payload.tags.items()]
    mark = RunTag(digest_tag, payload.digest)
    single = (len(metrics) + len(plist) + len(tags) + 1 <= MAX_BATCH_ENTITIES
              and len(plist) <= MAX_BATCH_PARAMS_TAGS and len(tags) < MAX_BATCH_PARAMS_TAGS)
    # a batch MLflow must split would commit its tags (and so the digest) before its last metrics
    client.log_batch(run_id, metrics=metrics, params=plist, tags=tags + [mark] if single else tags)
    if not single:
        client.set_tag(run_id, digest_tag, payload.digest)
    client.set_terminated(run_id, "FINISHED")


def _metrics(points: list[tuple[str, float, int]], timestamp: int) -> list:
    """Metric entities; step ``s`` is stamped ``timestamp + s`` ms, so each step of a curve has its own
    time (the UI's time axes spread the curve) and a relogged point still carries the same stamp."""
    from mlflow.entities import Metric

    return [Metric(k, float(v), timestamp + int(step), int(step)) for k, v, step in points]


def _new_points(client, run, points: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    """The points a run does not hold yet (same key, step and value), for relogging changed content
    with a new timestamp without repeating the unchanged values."""
    held: dict[str, set] = {}
    for key in {k for k, _, step in points if step != 0 or k not in run.data.metrics}:
        held[key] = {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)}
    for key, value in run.data.metrics.items():  # step-0 scalars: the latest value suffices
        held.setdefault(key, set()).add((0, value))
    return [(k, v, step) for k, v, step in points if (step, float(v)) not in held.get(k, ())]


def _complete(run, digest: str, digest_tag: str = DIGEST_TAG) -> bool:
    return run.data.tags.get(digest_tag) == digest and run.info.status == "FINISHED"


def _changed(run, digest: str, digest_tag: str = DIGEST_TAG) -> bool:
    """The run was completed once with other content (an interrupted run has no digest, or this one)."""
    return run.data.tags.get(digest_tag, digest) != digest
