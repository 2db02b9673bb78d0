"""MLflow tracking of a search (DESIGN §4), written from the result files after each stage.

Hierarchy, one MLflow experiment per experiment name::

    pipeline run   one per search: an experiment in one results folder (tag evomal.results_dir)
      generation run   gen_<g>                       (tag mlflow.parentRunId = pipeline run)
        candidate run  <id>, one per individual      (tag mlflow.parentRunId = generation run)

Only :class:`mlflow.tracking.MlflowClient` is used, never the fluent API: tracking jobs run as threads
of one Snakemake process, and the fluent active-run stack is process-global.

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

Infinite fitness: MLflow's SQL store silently turns +inf into the largest float (1.8e308), which
ruins charts and sorting. A candidate with infinite fitness therefore has no ``fitness`` metric; its
tag ``fitness`` says ``inf`` (every candidate has that tag, with the exact value as text). Other
non-finite points (a diverged curve, a NaN statistic) are left out of the metrics too; the result
files keep them.

Failures never cost compute: tracking rules only read compute outputs and nothing but ``rule all``
depends on theirs. A backend that is unreachable (probed with a short timeout before any MLflow call)
or fails makes the job raise :class:`TrackingError` naming the URI; with ``keep-going`` Snakemake
finishes all compute, exits non-zero listing the tracking jobs, and the next run catches up.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evomal.core import files
from evomal.pipeline.faults import failpoint
from evomal.core.joblog import JobLog
from evomal.pipeline.contract import DECISIONS, candidate_dir

#: Bump when what is logged changes: every run's digest then differs and is logged again.
TRACKING_VERSION = 1

KEY_TAG = "evomal.key"
DIGEST_TAG = "evomal.digest"
LEVEL_TAG = "evomal.level"
PIPELINE_TAG = "evomal.pipeline"
GENERATION_TAG = "evomal.generation"
RESULTS_DIR_TAG = "evomal.results_dir"
SEARCH_ID_TAG = "evomal.search_id"
RESULTS_DIGEST_TAG = "evomal.results_digest"
CONFIG_CONFLICT_TAG = "evomal.config_changed"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

# MLflow's limits (mlflow.utils.validation); longer values are clipped here so that a rerun logs the
# same (clipped) param value instead of failing on the immutable param.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
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
    """Call ``fn``; on sqlite "database is locked", wait (exponential backoff with jitter) and retry.

    Every call made here is safe to repeat: params are equal, metrics carry the same step and
    timestamp, tags and artifacts are overwritten.
    """
    delay, start = 0.05, time.monotonic()
    rng = random.Random()  # jitter only; never the global RNG, which other jobs' threads use
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() - start > deadline:
                raise
        time.sleep(delay * (0.5 + rng.random()))
        delay = min(delay * 2, 5.0)


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

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


# --------------------------------------------------------------------------- small pure helpers
def _clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 14] + " ...[clipped]"


def _text(value) -> str:
    """A table cell as text: empty for missing values (pandas reads empty cells as NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _finite(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _digest(*parts: Any) -> str:
    return hashlib.sha256(files.dumps_json([TRACKING_VERSION, *parts]).encode()).hexdigest()[:20]


def _file_digest(path: Path) -> str | None:
    return files.file_digest(path) if path.exists() else None


def _now_ms() -> int:
    return int(time.time() * 1000)


def search_id(results_dir: str | Path) -> str:
    """Lookup key of a pipeline run: a hash of the absolute results folder (any characters allowed)."""
    return hashlib.sha256(str(Path(results_dir).resolve()).encode()).hexdigest()[:20]


def flatten(doc: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"search.population": "25", ...}`` (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


@dataclass
class Payload:
    """Everything logged to one run; ``metrics`` are (key, value, step), artifacts name -> Path | bytes."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    artifacts: dict[str, Path | bytes] = field(default_factory=dict)
    digest: str = ""


# --------------------------------------------------------------------------- runs: find, create
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
    from mlflow.entities import Metric

    return [Metric(k, float(v), timestamp, int(step)) for k, v, step in points]


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


# --------------------------------------------------------------------------- a generation's content
def _candidate_metrics(row: dict, frec: dict, optimized: dict | None, fit_doc: dict | None,
                       metric_name: str) -> list[tuple[str, float, int]]:
    out: list[tuple[str, float, int]] = []

    def add(key, value, step=0):
        x = _finite(value)
        if x is not None:
            out.append((key, x, int(step)))

    add("fitness", row["fitness"])
    timings = (fit_doc or {}).get("timings") or {}
    add("seconds/local_search", timings.get("local_search"))
    add("seconds/fitness", timings.get("fitness"))
    add("rejection_improvement", frec.get("rejection_improvement"))
    if optimized is not None:
        for step, value in enumerate(optimized.get("curve") or []):
            add("meta_train/val_loss", value, step)
    if fit_doc is not None:
        # (step, mean training loss since the previous point, validation metric): evomal.learning.training.train
        for step, loss, val in fit_doc.get("curve") or []:
            add("train/loss", loss, step)
            add(f"train/val_{metric_name}", val, step)
    return out


def loss_shape_png(expression: str, kind: str, weights, *, title: str = "") -> bytes:
    """A small PNG of the element-wise loss: vs the predicted probability f of a class (classification,
    y=1 for the true class, y=0 for another), or vs the prediction f at target y=0, i.e. the residual
    (regression). Matplotlib's object API with the Agg canvas: no pyplot global state."""
    import numpy as np
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from evomal.losses.compile import compile_frozen

    fn = compile_frozen(expression, [float(w) for w in weights])

    def curve(y_value: float, f: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            values = fn(torch.full_like(f, y_value), f).expand(f.shape).double().numpy().copy()
        values[~np.isfinite(values)] = np.nan  # a gap in the line instead of an error
        return values

    fig = Figure(figsize=(4.0, 3.0), dpi=72)
    FigureCanvasAgg(fig)
    # fixed margins: tight_layout costs more than the rest of the plot
    ax = fig.add_axes((0.16, 0.15, 0.8, 0.75))
    # the key goes into the axis label: a legend box costs half as much again as the whole plot
    if kind == "classification":
        f = torch.linspace(0.001, 0.999, 120, dtype=torch.float64)
        ax.plot(f.numpy(), curve(1.0, f))
        ax.plot(f.numpy(), curve(0.0, f), "--")
        ax.set_xlabel("predicted probability f of a class", fontsize=8)
        ax.set_ylabel("loss (solid: true class y=1, dashed: y=0)", fontsize=7)
    else:
        f = torch.linspace(-3.0, 3.0, 120, dtype=torch.float64)
        ax.plot(f.numpy(), curve(0.0, f))
        ax.set_xlabel("residual f - y (at y = 0)", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
    ax.set_title(_clip(title, 60), fontsize=7)
    ax.tick_params(labelsize=7)
    for axis in (ax.xaxis, ax.yaxis):  # text is most of the drawing time: few tick labels
        axis.set_major_locator(MaxNLocator(4))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# infix templates; each slot says the precedence its operand needs to go without parentheses
_INFIX = {"add": ("{0} + {1}", 1, (1, 2)), "sub": ("{0} - {1}", 1, (1, 2)), "mul": ("{0}*{1}", 2, (2, 2)),
          "aq": ("{0}/sqrt(1 + {1}^2)", 2, (2, 4)), "square": ("{0}^2", 3, (4,)), "abs": ("|{0}|", 4, (0,)),
          "log": ("log|{0}|", 4, (0,)), "sqrt": ("sqrt|{0}|", 4, (0,)), "sign": ("sign({0})", 4, (0,)),
          "tanh": ("tanh({0})", 4, (0,)), "min": ("min({0}, {1})", 4, (0, 0)), "max": ("max({0}, {1})", 4, (0, 0))}


def weighted_infix(expression: str, weights) -> str:
    """Readable infix text of the loss with its edge weights (4 significant digits; 1 left out).

    Unsimplified, so it costs microseconds where SymPy costs tens of milliseconds per candidate;
    log and sqrt are shown without their 1e-7 clamp.
    """
    from evomal.gp.expressions import parse

    weights = [float(w) for w in weights]
    counter = iter(range(-1, len(weights)))

    def walk(node) -> tuple[str, int]:  # (text, precedence: 1 sum, 2 product, 3 power, 4 atom)
        k = next(counter)
        if not node.children:
            text, prec = node.op, 1 if node.op.startswith("-") else 4
        else:
            template, prec, needs = _INFIX[node.op]
            args = [t if p >= need else f"({t})" for (t, p), need in zip((walk(c) for c in node.children), needs)]
            text = template.format(*args)
        w = weights[k] if k >= 0 else 1.0
        if w == 1.0:
            return text, prec
        return f"{w:.4g}*{text if prec >= 2 else f'({text})'}", 1 if w < 0 else 2

    return walk(parse(expression))[0]


def _formula_text(loss_doc: dict, weights, which: str) -> str:
    """Readable text of a loss file: the loss with ``weights`` (``which``: learned / initial)."""
    lines = [f"expression: {loss_doc['expression']}", f"kind: {loss_doc['kind']}",
             f"loss ({which} weights): {weighted_infix(loss_doc['expression'], weights)}",
             f"{which} weights: {[float(w) for w in weights]}",
             f"simplified, with the weights of loss.json: {loss_doc.get('formula', '')}",
             f"latex, with the weights of loss.json: {loss_doc.get('latex', '')}"]
    return "\n".join(lines) + "\n"


def _metric_name(kind: str | None) -> str:
    return "mse" if kind == "regression" else "error_rate"


def _candidate_paths(gen_dir: Path, cand_id: str) -> tuple[Path, Path, Path]:
    cdir = candidate_dir(gen_dir, cand_id)
    return cdir / "loss.json", cdir / "fitness.json", cdir / "optimized.pt"


def candidate_digest(row: dict, frec: dict, individual: dict, gen_dir: Path) -> str:
    """Hash of everything a candidate run shows: cheap, so an unchanged run is skipped unread."""
    return _digest(row, {k: v for k, v in frec.items() if k != "signature"}, individual,
                   [_file_digest(p) for p in _candidate_paths(gen_dir, row["id"])])


def candidate_payload(row: dict, frec: dict, individual: dict, gen_dir: Path, *, experiment: str,
                      generation: int, digest: str) -> Payload:
    """What a candidate run holds (pure apart from reading the candidate's files)."""
    loss_path, fit_path, opt_path = _candidate_paths(gen_dir, row["id"])
    loss_doc = files.read_json(loss_path) if loss_path.exists() else None
    fit_doc = files.read_json(fit_path) if fit_path.exists() else None
    optimized = files.read_tensors(opt_path) if opt_path.exists() else None
    kind = loss_doc["kind"] if loss_doc else None
    fitness = files.number(row["fitness"]) if _text(row["fitness"]) else math.inf
    p = Payload(digest=digest)
    p.params = {
        "id": row["id"], "generation": str(generation),
        "expression": _clip(row["expression"], MAX_PARAM_LENGTH),
        "key": _clip(_text(frec.get("key")) or _text(row.get("key")), MAX_PARAM_LENGTH),
        "key_method": _text(frec.get("key_method")),
        "parents": " ".join(individual.get("parents", [])) or "-",
        "origin": _text(individual.get("origin") or row.get("origin")),
    }
    p.tags = {
        RUN_NAME_TAG: row["id"], KEY_TAG: f"{experiment}/gen_{generation}/{row['id']}", LEVEL_TAG: "candidate",
        GENERATION_TAG: str(generation), "decision": _text(row["decision"]), "reason": _text(row.get("reason")),
        "reuse_of": _text(row.get("reuse_of")), "fitness": repr(fitness) if math.isfinite(fitness) else "inf",
    }
    if frec.get("shard") is not None:
        p.tags["shard"] = str(frec["shard"])
    if optimized is not None:
        p.tags["local_search.status"] = _text(optimized.get("status"))
        if optimized.get("reason"):
            p.tags["local_search.reason"] = _text(optimized.get("reason"))
    p.metrics = _candidate_metrics(row, frec, optimized, fit_doc, _metric_name(kind))
    if loss_doc is not None:
        learned = None
        if optimized is not None and optimized.get("weights") is not None:
            learned = [float(w) for w in optimized["weights"].reshape(-1).tolist()]
        weights = learned if learned is not None else loss_doc["weights"]
        p.artifacts = {
            "loss.json": loss_path,
            "formula.txt": _formula_text(loss_doc, weights, "initial" if learned is None else "learned").encode(),
            "loss_shape.png": loss_shape_png(loss_doc["expression"], kind, weights, title=row["expression"]),
        }
        if fit_doc is not None:
            p.artifacts["fitness.json"] = fit_path
    return p


def read_generation(gen_dir: Path) -> tuple[list[dict], dict[str, dict], dict[str, dict]]:
    """(fitness.tsv rows, filter records by id, population individuals by id)."""
    table = files.read_tsv(gen_dir / "fitness.tsv")
    rows = [{k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in r.items()}
            for r in table.astype(object).to_dict("records")]
    for r in rows:
        r["id"] = str(r["id"])
    frecs = {str(c["id"]): c for c in files.read_json(gen_dir / "filter.json")["candidates"]}
    individuals = {str(i["id"]): i for i in files.read_json(gen_dir / "population.json")["individuals"]}
    return rows, frecs, individuals


def generation_summary(rows: list[dict], archive: dict | None) -> dict[str, float]:
    """Metrics of a generation: best and median fitness, best so far, counts per filter decision."""
    values = [files.number(r["fitness"]) if _text(r["fitness"]) else math.inf for r in rows]
    values = [v for v in values if not math.isnan(v)]
    out: dict[str, float] = {"n_individuals": float(len(rows)),
                             "n_finite": float(sum(math.isfinite(v) for v in values))}
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        out["best"] = min(finite)
    if values and math.isfinite(statistics.median(values)):
        out["median"] = statistics.median(values)
    best = (archive or {}).get("best")
    if best is not None and _finite(best.get("fitness")) is not None:
        out["best_so_far"] = float(best["fitness"])
    for d in DECISIONS:
        out[f"count/{d}"] = float(sum(r["decision"] == d for r in rows))
    return out


def stage_seconds(folder: Path) -> dict[str, float]:
    """``seconds/<stage>`` from the compute timings the stages record in ``<folder>/timings/``."""
    out = {}
    for path in sorted((folder / "timings").glob("*.json")):
        doc = files.read_json(path)
        x = _finite(doc.get("seconds"))
        if x is not None:
            out[f"seconds/{doc.get('stage', path.stem)}"] = x
    if out:
        out["seconds/total"] = sum(out.values())
    return out


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


def _generation_payload(rows: list[dict], archive: dict | None, gen_dir: Path, generation: int) -> Payload:
    summary = {**generation_summary(rows, archive), **stage_seconds(gen_dir)}
    ranked = sorted((files.number(r["fitness"]), r["id"]) for r in rows if _text(r["fitness"]))
    best_id = ranked[0][1] if ranked and math.isfinite(ranked[0][0]) else ""
    return Payload(params={"generation": str(generation), "population": str(len(rows))},
                   tags={"best_id": best_id},
                   metrics=[(k, v, 0) for k, v in summary.items()],
                   artifacts={"fitness.tsv": gen_dir / "fitness.tsv"},
                   digest=_digest(summary, best_id, files.file_digest(gen_dir / "fitness.tsv")))


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
    result = {"tracking_uri": uri, "configured_uri": tracking_uri, "experiment": experiment_name,
              "experiment_id": run.info.experiment_id, "run_id": run.info.run_id,
              "results_dir": str(exp_dir.resolve())}
    say(f"pipeline run {run.info.run_id} in experiment {experiment_name} ({uri})")
    if out is not None:
        files.write_json(out, result)
        files.record_seconds(out, "tracking_init", time.perf_counter() - t0)  # tracking/timings/, not exp timings
    return result


def _results_metrics(table, summary, prefix: str) -> list[tuple[str, float, int]]:
    """Per seed (step = seed) and summary metrics of meta_test.tsv / transfer.tsv."""
    out: list[tuple[str, float, int]] = []
    for r in table.to_dict("records") if table is not None else []:
        base = f"{prefix}/{r['target']}/{r['method']}"
        x = _finite(r["test_metric"])
        if x is not None:
            out.append((f"{base}/test_{r['metric']}", x, int(r["seed"])))
    if table is not None and len(table):
        for (target, method), g in table.groupby(["target", "method"], sort=False):
            out.append((f"{prefix}/{target}/{method}/diverged", float(g["diverged"].astype(str).str.lower()
                                                                      .isin(["true", "1"]).sum()), 0))
    for r in summary.to_dict("records") if summary is not None else []:
        compared = _finite(r.get("baseline_mean")) is not None  # False for the baseline's own row
        for col in ("mean", "std") + (("mean_difference", "t_statistic", "p_value", "wins", "losses")
                                      if compared else ()):
            x = _finite(r.get(col))
            if x is not None:
                out.append((f"{prefix}/{r['target']}/{r['method']}/{col}", x, 0))
    return out


def experiment_record(config: dict, experiment: str) -> dict:
    """An experiment's resolved config as logged on its pipeline run (the content of its config.yaml)."""
    return {"device": config["device"], "shards": config["shards"], **config["experiments"][experiment]}


def results_inputs(exp_dir: str, exp: dict) -> dict[str, str]:
    """Result files the track_results rule reads, for an experiment's resolved config ``exp``."""
    inputs = {"meta_test": f"{exp_dir}/meta_test.tsv", "meta_test_summary": f"{exp_dir}/meta_test_summary.tsv"}
    if exp["transfer"]:
        inputs.update(transfer=f"{exp_dir}/transfer.tsv", transfer_summary=f"{exp_dir}/transfer_summary.tsv")
    if exp["method"] != "baseline":  # a search: its best loss is logged too
        inputs["best"] = f"{exp_dir}/best/loss.json"
    return inputs


def _read_optional_tsv(path: Path):
    return files.read_tsv(path) if path.exists() and path.stat().st_size else None


def _best_loss_artifacts(best_path: Path) -> dict[str, Path | bytes]:
    best = files.read_json(best_path)  # select_best stores the meta-learned weights
    return {"best/loss.json": best_path,
            "best/formula.txt": _formula_text(best, best["weights"], "learned").encode(),
            "best/loss_shape.png": loss_shape_png(best["expression"], best["kind"], best["weights"],
                                                  title=best["expression"])}


def _best_loss_tags(best_path: Path) -> dict[str, str]:
    best = files.read_json(best_path)
    return {"best.id": _text(best.get("id")), "best.generation": _text(best.get("generation")),
            "best.fitness": _text(best.get("fitness")), "best.expression": best["expression"],
            "best.formula": best.get("formula", "")}


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
                                                "transfer_summary.tsv") if (exp_dir / name).exists()}
    points = []
    for prefix in ("meta_test", "transfer"):
        points += _results_metrics(_read_optional_tsv(exp_dir / f"{prefix}.tsv"),
                                   _read_optional_tsv(exp_dir / f"{prefix}_summary.tsv"), prefix)
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
