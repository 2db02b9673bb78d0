"""MLflow tracking (evomal.results.tracking): the run tree, idempotent reruns, sqlite and a real server.

Generation files are built with the pipeline's own writers (init_population, save_loss,
write_tensors, gather_generation); only filter.json and fitness.json are written directly, in the
formats of the stage functions (evomal.pipeline), so no training runs here.

``assert_tracking_matches`` is meant for the end-to-end tests as well::

    from test_tracking import assert_tracking_matches
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from evomal.core import files
from evomal.results import tracking
from evomal.losses.lossfile import save_loss
from evomal.gp.expressions import parse
from evomal.gp.operators import init_population
from evomal.core.files import record_seconds
from evomal.pipeline.contract import PER_SEED_COLUMNS, candidate_dir
from evomal.pipeline.gathering import gather_generation
from evomal.learning.statistics import summarize

EXPERIMENT = "digits-test"


def assert_tracking_matches(tracking_uri: str, experiment_name: str, exp_dir, generations=None) -> None:
    """The MLflow tree at ``tracking_uri`` matches the result files of ``exp_dir`` (see
    evomal.results.tracking.tracking_mismatches): one pipeline run, one generation run per generation, one
    candidate run per fitness.tsv row with its expression, decision and fitness.

    After a Snakemake run in ``workdir`` with the default URI, pass absolute paths:
    ``assert_tracking_matches(f"sqlite:///{workdir}/results/mlflow.db", "tiny", workdir / "results/tiny")``.
    """
    problems = tracking.tracking_mismatches(tracking_uri, experiment_name, exp_dir, generations)
    assert not problems, "MLflow does not match the result files:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- building result files
def _decision(i: int) -> str:
    # a realistic mix: most evaluated, some rejected, equivalents pointing at an evaluated one
    return {3: "rejected", 7: "equivalent", 9: "gradient_equivalent", 10: "rejected"}.get(i, "evaluate")


def make_generation(exp_dir: Path, generation: int, *, size: int = 12, kind: str = "classification",
                    meta_steps: int = 50, seed: int = 0) -> Path:
    """Write gen_<generation>/ as the pipeline would: population, filter, candidate files, table, archive."""
    gen_dir = exp_dir / f"gen_{generation}"
    individuals = init_population(size, seed=seed + generation, init_height=(2, 4), max_height=10)
    individuals = [i.to_dict() for i in individuals]
    for ind in individuals:  # ids are unique within a run
        ind["id"] = f"g{generation}-{ind['id'].split('-')[1]}"
    files.write_json(gen_dir / "population.json", {"experiment": exp_dir.name, "generation": generation,
                                                    "seed": seed, "individuals": individuals})
    records, first = [], None
    for i, ind in enumerate(individuals):
        decision = _decision(i)
        rec = {"id": ind["id"], "expression": ind["expression"], "key": f"key-{generation}-{i}",
               "key_method": "sympy", "decision": decision, "reason": None, "reuse_of": None, "shard": None,
               "signature": None, "rejection_improvement": 0.25}
        if decision == "evaluate":
            first = first or ind["id"]
            rec.update(reason="new loss", shard=i % 2, signature=[0.1, 0.2])
            _candidate_files(gen_dir, ind, kind, i, meta_steps)
        elif decision == "rejected":
            rec.update(reason="no improvement under the rejection protocol (-0.01)", rejection_improvement=-0.01)
        else:
            rec.update(reason=f"same canonical form as {first}", reuse_of=first)
        records.append(rec)
    counts = {d: sum(r["decision"] == d for r in records) for d in tracking.DECISIONS}
    files.write_json(gen_dir / "filter.json", {"generation": generation, "shards": 2, "counts": counts,
                                               "candidates": records})
    record_seconds(gen_dir / "filter.json", "filter", 1.5)
    prev = exp_dir / f"gen_{generation - 1}" / "archive.json"
    gather_generation(gen_dir / "filter.json", gen_dir / "population.json", gen_dir / "fitness.tsv",
                      gen_dir / "archive.json", generation=generation,
                      prev_archive=prev if prev.exists() else None)
    return gen_dir


def _candidate_files(gen_dir: Path, ind: dict, kind: str, i: int, meta_steps: int) -> None:
    cdir = candidate_dir(gen_dir, ind["id"])
    tree = parse(ind["expression"])
    weights = torch.ones(tree.num_edges) + 0.001 * torch.arange(tree.num_edges)
    save_loss(cdir / "loss.json", tree, kind, weights, id=ind["id"], fingerprint="test")
    curve = [2.3 / (1 + 0.1 * s) for s in range(meta_steps)]
    files.write_tensors(cdir / "optimized.pt", {"weights": weights * 1.01, "curve": curve, "status": "ok",
                                                "reason": "", "seconds": 0.5, "fingerprint": "test"})
    diverged = i == 5  # one evaluated loss whose training diverged: fitness inf
    fitness = math.inf if diverged else 0.05 + 0.01 * i
    train_curve = [(step, 1.0 / step, fitness if step == 300 else 0.5) for step in (100, 200, 300)]
    if diverged:
        train_curve = [(100, 2.0, 0.9), (200, math.nan, math.nan)]
    files.write_json(cdir / "fitness.json", {
        "id": ind["id"], "expression": ind["expression"], "fitness": fitness,
        "reason": "non-finite training loss by step 200" if diverged else "", "curve": train_curve,
        "timings": {"local_search": 0.5, "fitness": 0.25}, "fingerprint": "test"})


def make_results(exp_dir: Path) -> None:
    rows = []
    for target in ("digits/mlp", "wine/mlp"):
        for seed in range(3):
            for method, base in (("baseline", 0.10), ("evomal", 0.08)):
                rows.append({"target": target, "method": method, "seed": seed, "test_metric": base + 0.01 * seed,
                             "metric": "error_rate", "diverged": False, "reason": ""})
    frame = pd.DataFrame(rows, columns=PER_SEED_COLUMNS)
    for name, part in (("meta_test", frame[frame.target == "digits/mlp"]), ("transfer", frame[frame.target != "digits/mlp"])):
        files.write_tsv(exp_dir / f"{name}.tsv", part)
        files.write_tsv(exp_dir / f"{name}_summary.tsv", summarize(part))
    record_seconds(exp_dir / "meta_test.tsv", "meta_test", 3.0)
    tree = parse("mul(-1, mul(y, log(f)))")
    save_loss(exp_dir / "best" / "loss.json", tree, "classification", [1.0, 1.0, 1.0, 1.0, 1.0],
              id="g0-000", generation=0, fitness=0.05, method="evomal")


@pytest.fixture(scope="session")
def templates(tmp_path_factory):
    """Built once per session, copied per test: a migrated empty MLflow DB (migrations take seconds)
    and generation folders (save_loss simplifies every formula with SymPy)."""
    root = tmp_path_factory.mktemp("templates")
    db = root / "mlflow.db"
    tracking.ensure_store(f"sqlite:///{db}")
    built: dict = {}

    def generation(exp_dir: Path, g: int, **kw) -> Path:
        src = built.setdefault(tuple(sorted(kw.items())), root / f"exp{len(built)}" / exp_dir.name)
        for prior in range(g + 1):  # generation g is gathered against g-1's archive
            if not (src / f"gen_{prior}" / "fitness.tsv").exists():
                make_generation(src, prior, **kw)
        shutil.copytree(src / f"gen_{g}", exp_dir / f"gen_{g}", dirs_exist_ok=True)
        return exp_dir / f"gen_{g}"

    return {"db": db, "generation": generation}


@pytest.fixture
def gen(templates):
    return templates["generation"]


@pytest.fixture
def exp_dir(tmp_path) -> Path:
    d = tmp_path / "results" / EXPERIMENT
    (d).mkdir(parents=True)
    return d


CONFIG = {"method": "evomal", "seed": 0, "dataset": "digits", "search": {"population": 25, "generations": 2}}


@pytest.fixture
def sqlite_uri(tmp_path, templates) -> str:
    db = tmp_path / "results" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(templates["db"], db)
    return f"sqlite:///{db}"


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _all_runs(uri, view="ALL"):
    from mlflow.entities import ViewType

    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return list(client.search_runs([exp.experiment_id], run_view_type=getattr(ViewType, view), max_results=5000))


def _track_all(uri, exp_dir, generations=(0, 1)):
    tracking.init_tracking(uri, EXPERIMENT, exp_dir, config=CONFIG, out=exp_dir / "tracking" / "run.json")
    return [tracking.track_generation(uri, EXPERIMENT, exp_dir, g) for g in generations]


# --------------------------------------------------------------------------- sqlite
def test_tree_matches_files(gen, exp_dir, sqlite_uri):
    for g in (0, 1):
        gen(exp_dir, g)
    results = _track_all(sqlite_uri, exp_dir)
    assert [r["created"] for r in results] == [12, 12]
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)

    client = _client(sqlite_uri)
    run_doc = files.read_json(exp_dir / "tracking" / "run.json")
    pipeline = client.get_run(run_doc["run_id"])
    assert pipeline.data.tags[tracking.RESULTS_DIR_TAG] == str(exp_dir.resolve())
    assert pipeline.data.params["search.population"] == "25"
    assert [m.step for m in client.get_metric_history(run_doc["run_id"], "search/best")] == [0, 1]

    gen0 = client.get_run(results[0]["generation_run_id"])
    assert gen0.data.tags[tracking.PARENT_TAG] == run_doc["run_id"]
    table = files.read_tsv(exp_dir / "gen_0" / "fitness.tsv")
    finite = table.fitness[table.fitness.apply(math.isfinite)]
    assert gen0.data.metrics["best"] == pytest.approx(finite.min())
    assert gen0.data.metrics["count/evaluate"] == (table.decision == "evaluate").sum()
    assert gen0.data.metrics["count/rejected"] == 2

    runs = {r.data.params["id"]: r for r in tracking.find_runs(
        client, [pipeline.info.experiment_id], f"tags.`mlflow.parentRunId` = '{gen0.info.run_id}'")}
    row = table.iloc[0]
    run = runs[row.id]
    assert run.data.params["expression"] == row.expression
    assert run.data.params["key"] == "key-0-0" and run.data.params["origin"] == "init"
    # what the runs table shows without columns picked: the id and how the loss did
    assert run.data.tags["decision"] == "evaluate" and run.data.tags["mlflow.runName"] == f"{row.id} {row.fitness:.4g}"
    assert run.data.tags["fitness"] == f"{row.fitness:.4g}" and run.data.metrics["fitness"] == row.fitness
    # no description: the runs table would show an empty Description column for every candidate (MLflow 3.17)
    assert "mlflow.note.content" not in run.data.tags
    assert len(client.get_metric_history(run.info.run_id, "meta_train/val_loss")) == 50
    history = client.get_metric_history(run.info.run_id, "train/val_error_rate")
    assert [m.step for m in history] == [100, 200, 300]
    # one time per step: charts against time spread the curve instead of stacking it on one instant
    assert [m.timestamp - run.info.start_time for m in history] == [100, 200, 300]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"loss.json", "formula.txt", "loss_shape.png", "fitness.json"}
    png = Path(client.download_artifacts(run.info.run_id, "loss_shape.png", str(exp_dir.parent / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # artifacts live beside the database
    assert (exp_dir.parent / "mlflow-artifacts").is_dir()

    diverged = runs[table.iloc[5].id]  # evaluated, fitness inf: no metric, tag says so
    assert "fitness" not in diverged.data.metrics and diverged.data.tags["fitness"] == "inf"
    assert "non-finite" in diverged.data.tags["reason"]
    rejected = runs[table.iloc[3].id]
    assert rejected.data.tags["decision"] == "rejected" and rejected.data.tags["fitness"] == "inf"
    assert rejected.data.tags["mlflow.runName"] == f"{table.iloc[3].id} rejected"
    equivalent = runs[table.iloc[7].id]
    assert equivalent.data.tags["reuse_of"] == table.iloc[0].id
    assert equivalent.data.metrics["fitness"] == pytest.approx(row.fitness)


def test_rerun_changes_nothing(gen, exp_dir, sqlite_uri):
    for g in (0, 1):
        gen(exp_dir, g)
    make_results(exp_dir)
    _track_all(sqlite_uri, exp_dir)
    first = tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir)
    before = {r.info.run_id: len(r.data.metrics) for r in _all_runs(sqlite_uri)}
    client = _client(sqlite_uri)
    cand = next(r for r in _all_runs(sqlite_uri) if r.data.tags.get(tracking.LEVEL_TAG) == "candidate")
    history = len(client.get_metric_history(cand.info.run_id, "meta_train/val_loss"))

    again = _track_all(sqlite_uri, exp_dir)
    assert [r["unchanged"] for r in again] == [12, 12] and all(r["created"] == 0 for r in again)
    second = tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir)
    assert second["state"] == "unchanged" and second["pipeline_run_id"] == first["pipeline_run_id"]
    after = {r.info.run_id: len(r.data.metrics) for r in _all_runs(sqlite_uri)}
    assert after == before  # no run added, none deleted (ViewType.ALL), no metric added
    assert len(client.get_metric_history(cand.info.run_id, "meta_train/val_loss")) == history
    assert len(before) == 1 + 2 + 24
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)


def test_results_on_pipeline_run(exp_dir, sqlite_uri):
    make_results(exp_dir)
    tracking.init_tracking(sqlite_uri, EXPERIMENT, exp_dir)
    res = tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir, out=exp_dir / "tracking" / "results.json")
    client = _client(sqlite_uri)
    run = client.get_run(res["pipeline_run_id"])
    history = client.get_metric_history(run.info.run_id, "meta_test/digits/mlp/evomal/test_error_rate")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 0.08), (1, 0.09), (2, 0.1)]
    assert run.data.metrics["transfer/wine/mlp/evomal/mean"] == pytest.approx(0.09)
    assert run.data.metrics["transfer/wine/mlp/evomal/mean_difference"] == pytest.approx(-0.02)
    assert run.data.tags["best.expression"] == "mul(-1, mul(y, log(f)))"
    assert run.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "results")}
    assert names == {f"results/{n}" for n in ("meta_test.tsv", "meta_test_summary.tsv", "transfer.tsv",
                                              "transfer_summary.tsv")}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "best")} >= {"best/loss.json",
                                                                                "best/loss_shape.png"}
    assert files.read_json(exp_dir / "tracking" / "results.json")["state"] == "created"
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)


def test_recomputed_generation_replaces_changed_runs(gen, exp_dir, sqlite_uri):
    gen(exp_dir, 0)
    _track_all(sqlite_uri, exp_dir, generations=(0,))
    # recompute generation 0 with another population (another seed) and fewer individuals
    shutil.rmtree(exp_dir / "gen_0")
    gen(exp_dir, 0, size=8, seed=7)
    res = tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0)
    assert res["deleted"] == 4 and res["replaced"] + res["unchanged"] == 8 and res["replaced"] >= 6
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)
    gen = _client(sqlite_uri).get_run(res["generation_run_id"])
    assert gen.data.metrics["n_individuals"] == 8  # the changed value is the latest


def test_interrupted_run_is_finished_without_duplicates(gen, exp_dir, sqlite_uri):
    gen(exp_dir, 0)
    res = _track_all(sqlite_uri, exp_dir, generations=(0,))[0]
    client = _client(sqlite_uri)
    cand = next(r for r in _all_runs(sqlite_uri, "ACTIVE_ONLY") if r.data.tags.get(tracking.LEVEL_TAG) == "candidate"
                and "fitness" in r.data.metrics)
    # as if the job had died after log_batch's first part: no digest, still RUNNING
    client.delete_tag(cand.info.run_id, tracking.DIGEST_TAG)
    client.update_run(cand.info.run_id, status="RUNNING")
    again = tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0)
    assert again["updated"] == 1 and again["unchanged"] == 11 and again["generation_run_id"] == res["generation_run_id"]
    assert len(client.get_metric_history(cand.info.run_id, "meta_train/val_loss")) == 50
    assert client.get_run(cand.info.run_id).info.status == "FINISHED"
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)


def test_duplicate_runs_are_collapsed(gen, exp_dir, sqlite_uri):
    gen(exp_dir, 0, size=6)
    _track_all(sqlite_uri, exp_dir, generations=(0,))
    client = _client(sqlite_uri)
    cand = next(r for r in _all_runs(sqlite_uri, "ACTIVE_ONLY") if r.data.tags.get(tracking.LEVEL_TAG) == "candidate")
    client.create_run(cand.info.experiment_id, tags=cand.data.tags)  # a stray duplicate
    tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0)
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)


def test_relative_sqlite_uri_and_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = tracking.ensure_store("sqlite:///results/mlflow.db")
    assert uri == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    assert (tmp_path / "results" / "mlflow.db").exists()
    assert tracking.artifact_location("sqlite:///results/mlflow.db") == (tmp_path / "results" / "mlflow-artifacts").as_uri()
    assert tracking.artifact_location("http://127.0.0.1:5000") is None
    assert not (tmp_path / "mlruns").exists()


def test_parallel_jobs_share_sqlite(gen, tmp_path, exp_dir, sqlite_uri):
    """Without Snakemake's mlflow=1 resource: concurrent jobs on one sqlite file still all succeed."""
    other = tmp_path / "results" / "other-exp"
    for d in (exp_dir, other):
        for g in (0, 1):
            gen(d, g, size=8)
    tracking.init_tracking(sqlite_uri, EXPERIMENT, exp_dir)
    tracking.init_tracking(sqlite_uri, "other-exp", other)
    errors = []

    def job(name, d, g):
        try:
            tracking.track_generation(sqlite_uri, name, d, g)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(n, d, g)) for n, d in ((EXPERIMENT, exp_dir), ("other-exp", other))
               for g in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)
    assert_tracking_matches(sqlite_uri, "other-exp", other)


def test_lock_retry():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    import random

    state = random.getstate()
    assert tracking.with_lock_retry(flaky) == "ok" and len(calls) == 3
    # the waits' jitter never draws from the global RNG, which breeding seeds for DEAP in other threads
    assert random.getstate() == state
    with pytest.raises(ValueError):
        tracking.with_lock_retry(lambda: (_ for _ in ()).throw(ValueError("other")))
    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):  # past the deadline the last error is raised
        tracking.with_lock_retry(flaky, deadline=0.0)
    assert len(calls) == 1


def test_the_ui_opens_a_candidates_table_and_describes_the_search(gen, exp_dir, sqlite_uri):
    import json

    gen(exp_dir, 0)
    _track_all(sqlite_uri, exp_dir, generations=(0,))
    client = _client(sqlite_uri)
    run_doc = files.read_json(exp_dir / "tracking" / "run.json")
    exp = client.get_experiment(run_doc["experiment_id"])
    view = json.loads(exp.tags["mlflow.sharedViewState." + tracking.CANDIDATES_VIEW])
    assert view["selectedColumns"][:4] == ["tags.`fitness`", "tags.`decision`", "params.`expression`", "params.`key`"]
    assert view["orderByKey"] == "metrics.`fitness`" and view["orderByAsc"] is True
    # the view's filter is a valid search that finds exactly the candidate runs
    found = tracking.find_runs(client, [exp.experiment_id], view["searchFilter"])
    assert len(found) == 12 and {r.data.tags["evomal.level"] for r in found} == {"candidate"}
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run_doc["candidates_view"].endswith(f"#/experiments/{exp.experiment_id}/runs?workflowType="
                                               f"machine_learning&viewStateShareKey={tracking.CANDIDATES_VIEW}")
    pipeline = client.get_run(run_doc["run_id"])
    assert "population 25" in pipeline.data.tags["mlflow.note.content"]
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        assert pipeline.data.tags["mlflow.source.git.commit"] == head


# --------------------------------------------------------------------------- unreachable backend
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_naming_the_uri(gen, exp_dir, tmp_path):
    gen(exp_dir, 0, size=4)
    uri = f"http://127.0.0.1:{_free_port()}"
    log = tmp_path / "track.log"
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=uri.replace(".", r"\.")) as err:
        tracking.track_generation(uri, EXPERIMENT, exp_dir, 0, out=tmp_path / "tracked.json", log=str(log))
    assert time.monotonic() - t0 < 10
    assert "snakemake again" in str(err.value)
    assert "WARNING" in log.read_text() and uri in log.read_text()
    assert not (tmp_path / "tracked.json").exists()
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.init_tracking(uri, EXPERIMENT, exp_dir)
    # the compute outputs are untouched
    assert (exp_dir / "gen_0" / "fitness.tsv").exists()


# --------------------------------------------------------------------------- a real tracking server
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'srv.db'}",
         "--default-artifact-root", str(root / "art"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(uri + "/health", timeout=2).status_code == 200:
                    break
            except requests.exceptions.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        # the server runs uvicorn as a child: stop the whole process group we started
        with_group = lambda sig: os.killpg(proc.pid, sig)  # noqa: E731
        try:
            with_group(signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with_group(signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def test_tracking_server_receives_the_same_tree(gen, exp_dir, mlflow_server):
    for g in (0, 1):
        gen(exp_dir, g, size=10)
    make_results(exp_dir)
    _track_all(mlflow_server, exp_dir)
    tracking.track_results(mlflow_server, EXPERIMENT, exp_dir)
    assert_tracking_matches(mlflow_server, EXPERIMENT, exp_dir)
    again = _track_all(mlflow_server, exp_dir)
    assert [r["unchanged"] for r in again] == [10, 10]
    assert tracking.track_results(mlflow_server, EXPERIMENT, exp_dir)["state"] == "unchanged"
    assert len(_all_runs(mlflow_server)) == 1 + 2 + 20
    client = _client(mlflow_server)
    cand = next(r for r in _all_runs(mlflow_server) if r.data.tags.get("decision") == "evaluate")
    assert {a.path for a in client.list_artifacts(cand.info.run_id)} >= {"loss.json", "loss_shape.png"}


def test_timing_25_candidates(gen, exp_dir, sqlite_uri, capsys):
    """Reports the cost of tracking one generation of 25 candidates (reference meta steps: 250)."""
    gen(exp_dir, 0, size=25, meta_steps=250)
    tracking.init_tracking(sqlite_uri, EXPERIMENT, exp_dir)
    t0 = time.perf_counter()
    first = tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0)
    t1 = time.perf_counter()
    again = tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0)
    t2 = time.perf_counter()
    with capsys.disabled():
        print(f"\n[timing] track 25 candidates on sqlite: first {t1 - t0:.2f}s, rerun {t2 - t1:.2f}s")
    # the rerun's work is bounded by counts, not seconds: nothing is written again
    assert first["created"] == 25 and again["unchanged"] == 25 and again.get("created", 0) == 0


# --------------------------------------------------------------------------- small pieces
def test_changed_results_are_updated_not_duplicated(exp_dir, sqlite_uri):
    make_results(exp_dir)
    tracking.init_tracking(sqlite_uri, EXPERIMENT, exp_dir)
    first = tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir)
    table = files.read_tsv(exp_dir / "meta_test.tsv")
    table.loc[table.method == "evomal", "test_metric"] -= 0.01  # meta-test rerun with other results
    files.write_tsv(exp_dir / "meta_test.tsv", table)
    files.write_tsv(exp_dir / "meta_test_summary.tsv", summarize(table))
    second = tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir)
    assert second["state"] == "updated" and second["pipeline_run_id"] == first["pipeline_run_id"]
    run = _client(sqlite_uri).get_run(first["pipeline_run_id"])
    assert run.data.metrics["meta_test/digits/mlp/evomal/mean"] == pytest.approx(0.08)  # the new value
    assert len(_all_runs(sqlite_uri)) == 1
    assert_tracking_matches(sqlite_uri, EXPERIMENT, exp_dir)


def test_weighted_infix_is_readable():
    assert tracking.weighted_infix("mul(-1, mul(y, log(f)))", [1, 1, 1, 1, 1]) == "(-1)*y*log|f|"
    assert tracking.weighted_infix("sub(y, add(f, -1))", [1, 1, 1, 1]) == "y - (f + (-1))"
    assert tracking.weighted_infix("square(sub(y, f))", [0.5, 1, 2]) == "(0.5*(y - 2*f))^2"
    assert tracking.weighted_infix("aq(y, f)", [1, -0.25]) == "y/sqrt(1 + (-0.25*f)^2)"


def test_loss_shape_png_for_both_kinds(tmp_path):
    from matplotlib.image import imread

    from evomal.results.report.shapes import expression_shapes

    for kind in ("classification", "regression"):
        png = tracking.loss_shape_png("square(sub(y, f))", kind, [1.0, 1.0, 1.0], title="square")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 120_000
        (tmp_path / f"{kind}.png").write_bytes(png)
        height, width = imread(tmp_path / f"{kind}.png").shape[:2]
        assert width >= 600 and height >= 350  # readable, not a 288 x 216 thumbnail
        # what it draws: the loss and the baseline it is compared with
        baseline = "cross-entropy" if kind == "classification" else "MSE"
        assert all(list(c) == ["this loss", baseline] for c in expression_shapes("square(sub(y, f))", kind,
                                                                                 [1.0] * 3).curves.values())


def test_uris_and_rule_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("sqlite:///r/m.db") == f"sqlite:///{tmp_path / 'r' / 'm.db'}"
    assert tracking.resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert tracking.resolve_uri("http://h:5000") == "http://h:5000"
    exp = {"transfer": [], "method": "baseline"}
    assert set(tracking.results_inputs("results/x", exp)) == {"meta_test", "meta_test_summary"}
    exp = {"transfer": [{"dataset": "wine"}], "method": "evomal"}
    assert set(tracking.results_inputs("results/x", exp)) >= {"transfer", "transfer_summary", "best"}
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}


def test_changed_config_keeps_first_params(exp_dir, sqlite_uri):
    first = tracking.init_tracking(sqlite_uri, EXPERIMENT, exp_dir, config=CONFIG)
    make_results(exp_dir)
    changed = {**CONFIG, "seed": 1, "search": {"population": 25, "generations": 9}}
    res = tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir, config=changed)  # immutable params: no error
    assert res["pipeline_run_id"] == first["run_id"]
    client = _client(sqlite_uri)
    run = client.get_run(first["run_id"])
    assert run.data.params["seed"] == "0" and run.data.tags[tracking.CONFIG_CONFLICT_TAG] == "search.generations,seed"
    path = client.download_artifacts(first["run_id"], "config.yaml", str(exp_dir.parent / "dl"))
    assert "generations: 9" in Path(path).read_text()  # the artifact shows the current config


def test_missing_database_is_reported_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    assert "no MLflow database" in tracking.tracking_mismatches(uri, EXPERIMENT, tmp_path)[0]
    assert not (tmp_path / "nowhere").exists()


def test_rerun_meta_test_with_equal_results_adds_no_points(exp_dir, sqlite_uri):
    make_results(exp_dir)
    tracking.init_tracking(sqlite_uri, EXPERIMENT, exp_dir)
    first = tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir)
    table = files.read_tsv(exp_dir / "meta_test.tsv")
    table["reason"] = "recomputed"  # same metrics, another file
    files.write_tsv(exp_dir / "meta_test.tsv", table)
    assert tracking.track_results(sqlite_uri, EXPERIMENT, exp_dir)["state"] == "updated"
    history = _client(sqlite_uri).get_metric_history(first["pipeline_run_id"],
                                                     "meta_test/digits/mlp/evomal/test_error_rate")
    assert len(history) == 3


def test_recomputed_stage_timings_add_only_the_new_values(gen, exp_dir, sqlite_uri):
    """`snakemake --forceall` reuses candidate files, so only stage timings change."""
    gen(exp_dir, 0)
    res = _track_all(sqlite_uri, exp_dir, generations=(0,))[0]
    record_seconds(exp_dir / "gen_0" / "filter.json", "filter", 2.5)
    again = tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0)
    assert again["unchanged"] == 12 and again["generation_run_id"] == res["generation_run_id"]
    client = _client(sqlite_uri)
    gid = res["generation_run_id"]
    assert [m.value for m in client.get_metric_history(gid, "seconds/filter")] == [1.5, 2.5]
    assert client.get_run(gid).data.metrics["seconds/filter"] == 2.5
    assert len(client.get_metric_history(gid, "best")) == 1
    assert len(client.get_metric_history(res["pipeline_run_id"], "search/best")) == 1


def test_tracking_jobs_record_their_seconds_outside_the_generation(gen, exp_dir, sqlite_uri, tmp_path):
    """A tracking job's seconds go to tracking/timings/ (the benchmark counts them as compute, not idle
    time); in gen_<g>/timings/ they would be a new stage timing of the generation at its next tracking."""
    gen(exp_dir, 0)
    out = exp_dir / "gen_0" / "tracked.json"
    before = sorted(p.name for p in (exp_dir / "gen_0" / "timings").glob("*.json"))
    first = tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0, out=out)
    doc = json.loads((exp_dir / "tracking" / "timings" / "track_gen_0.json").read_text())
    assert doc["stage"] == "track_gen_0" and 0 < doc["seconds"] and doc["end"] > 0
    assert sorted(p.name for p in (exp_dir / "gen_0" / "timings").glob("*.json")) == before
    again = tracking.track_generation(sqlite_uri, EXPERIMENT, exp_dir, 0, out=out)
    assert again["unchanged"] == first["created"] and again["created"] == 0
    client = _client(sqlite_uri)
    assert not any(k.startswith("seconds/track") for k in client.get_run(first["generation_run_id"]).data.metrics)
