"""The pipeline through a real SLURM cluster (`snakemake --executor slurm`).

Needs snakemake-executor-plugin-slurm in this Python and a SLURM node that `sinfo` shows idle in the
partition `local`; otherwise every test is skipped, saying which is missing. The whole procedure
(separate venv, single-node cluster on this machine, these tests, cluster stopped again) is one command:

    sudo workflow/slurm/run_slurm_tests.sh

which sets EVOMAL_SLURM_REQUIRED=1: there, a missing plugin or cluster fails the tests instead.
See docs/slurm.md.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_utils import REPO, contract_files, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slurm

PROFILE = REPO / "workflow" / "profiles" / "slurm-local-test"
PARTITION = "local"  # what the local-test profile submits to
#: rules that must have run as SLURM jobs (the others are `localrules` and run inside Snakemake)
CLUSTER_RULES = {"filter", "optimize", "evaluate", "finalist_scores", "test_run"}
#: a failing SLURM job must end the run, not leave it waiting: a hang guard for the whole run (the
#: status checks run every 5 s + 10 s per miss, ~50 s; seconds are never asserted, the machine may be loaded)
FAIL_HANG_GUARD_S = 240


def slurm_config(**overrides) -> dict:
    """TINY_CONFIG cut to four SLURM levels: one generation (filter -> optimize -> evaluate) in one shard,
    then meta_test; no transfer; tracking to sqlite inside the workdir (results/mlflow.db).

    One shard, not two: on the 2-core test machine two jobs side by side take ~20 s each instead of
    ~12 s, which misses the second status check and costs ~25 s more per level."""
    config = tiny_config(search={"generations": 1}, transfer=[], **overrides)
    config["shards"] = 1
    assert config["tracking_uri"] == "sqlite:///results/mlflow.db"
    return config


def _cluster_problem() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return (f"snakemake-executor-plugin-slurm is not installed for {sys.executable} "
                "(run `sudo workflow/slurm/run_slurm_tests.sh`, which uses .venv-slurm)")
    if shutil.which("sinfo") is None:
        return "no SLURM client (`sinfo` not on PATH); start one with workflow/slurm/start_cluster.sh"
    try:
        proc = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-t", "idle,mixed", "-o", "%n"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`sinfo` timed out: no SLURM controller answers (workflow/slurm/start_cluster.sh)"
    if proc.returncode != 0 or not proc.stdout.strip():
        detail = (proc.stderr or proc.stdout).strip() or "no node listed"
        return (f"`sinfo` shows no idle node in partition {PARTITION!r} ({detail}); "
                "start the test cluster with workflow/slurm/start_cluster.sh")
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("EVOMAL_SLURM_REQUIRED") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


def _env() -> dict:
    """Jobs inherit the submitting environment (sbatch --export=ALL): this venv's bin/ comes first."""
    env = {k: v for k, v in os.environ.items() if k != "EVOMAL_FAILPOINT"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _jobs_of(workdir: Path) -> list[str]:
    """SLURM jobs still pending or running that were submitted from ``workdir``."""
    proc = subprocess.run(["squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-o", "%i %Z"],
                          capture_output=True, text=True, timeout=30)
    wanted = str(workdir.resolve())
    return [line.split()[0] for line in proc.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1] == wanted]


def _cancel_jobs_of(workdir: Path) -> list[str]:
    jobs = _jobs_of(workdir)
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)
    return jobs


def run_on_slurm(workdir: Path, *args: str, check: bool = True, timeout: float = 600):
    """`snakemake --executor slurm --profile workflow/profiles/slurm-local-test` (+ the workflow's default
    profile, which Snakemake loads by itself) in ``workdir``; returns (process, seconds)."""
    start = time.monotonic()
    try:
        proc = snakemake(workdir, "--executor", "slurm", "--profile", str(PROFILE), *args, env=_env(),
                         check=check, timeout=timeout)
    finally:
        left = _cancel_jobs_of(workdir)  # never leave jobs behind, whatever happened
    assert not left, f"Snakemake exited but SLURM jobs {left} of {workdir} were still queued or running"
    return proc, time.monotonic() - start


def slurm_logs(workdir: Path) -> dict[str, list[Path]]:
    """rule -> its SLURM job logs (.snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log)."""
    root = workdir / ".snakemake" / "slurm_logs"
    return {d.name.removeprefix("rule_"): sorted(d.rglob("*.log")) for d in sorted(root.glob("rule_*"))}


@pytest.fixture(scope="module")
def local_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local")
    write_config(workdir, slurm_config())
    snakemake(workdir, env=_env())
    return workdir


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    write_config(workdir, slurm_config())
    proc, seconds = run_on_slurm(workdir)
    print(f"tiny pipeline on SLURM: {seconds:.1f} s")
    return workdir, proc


def test_tiny_pipeline_completes_on_slurm(slurm_run):
    workdir, proc = slurm_run
    exp = workdir / "results" / "tiny"
    for name in ("config.yaml", "gen_0/fitness.tsv", "gen_0/tracked.json", "best/loss.json", "best/loss.py",
                 "meta_test.tsv", "report/summary.md", "tracking/results.json"):
        assert (exp / name).stat().st_size > 0, name
    assert (workdir / "results" / "mlflow.db").exists()
    output = proc.stdout + proc.stderr
    assert "has been submitted with SLURM jobid" in output
    logs = slurm_logs(workdir)
    # the heavy rules ran as SLURM jobs (one per rule here, the finalists in one part as there is one shard;
    # test_run: the baseline, reference and learned arms of the meta-test), the bookkeeping rules did not
    assert CLUSTER_RULES <= set(logs), logs
    assert {rule: len(logs[rule]) for rule in CLUSTER_RULES} == {"filter": 1, "optimize": 1, "evaluate": 1,
                                                                 "finalist_scores": 1, "test_run": 3}, logs
    assert not set(logs) & {"population", "compile", "gather", "finalists", "best", "report", "track",
                            "tracking_init", "meta_test", "transfer"}
    for rule in CLUSTER_RULES:
        for log in logs[rule]:
            assert f"Finished jobid: 0 (Rule: {rule})" in log.read_text(), log


def test_slurm_results_equal_a_local_run(slurm_run, local_run):
    """Fitness tables, the best loss and the meta-test table are the same bytes whichever executor ran
    the jobs (so is every other file of the contract)."""
    on_slurm = contract_files(slurm_run[0] / "results" / "tiny")
    local = contract_files(local_run / "results" / "tiny")
    for name in ("gen_0/fitness.tsv", "best/loss.json", "meta_test.tsv"):
        assert name in local and on_slurm.get(name) == local[name], name
    assert sorted(on_slurm) == sorted(local)
    assert [k for k in local if on_slurm[k] != local[k]] == []


def test_failing_slurm_job_stops_the_run(cluster, tmp_path):
    """A cluster rule that raises (filter: the dataset's files are missing) ends Snakemake with an error
    that points to the job's SLURM log, without waiting for a timeout, with no job left behind.

    The target is the filter's output, so nothing else (MLflow set-up) loads the 2 cores meanwhile: the
    failed job is then seen at the second status check (<= 20 s after submission) and Snakemake exits
    after the next interval (25 s): ~50 s in all."""
    write_config(tmp_path, slurm_config(dataset={"name": "fashion_mnist", "data_dir": "/nonexistent"}))
    proc, seconds = run_on_slurm(tmp_path, "results/tiny/gen_0/filter.json", check=False,
                                 timeout=FAIL_HANG_GUARD_S)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert "Error in rule filter" in output, output[-4000:]
    assert ".snakemake/slurm_logs" in output, output[-4000:]
    (log,) = slurm_logs(tmp_path)["filter"]
    assert str(log) in output
    assert "/nonexistent" in log.read_text() or "FileNotFoundError" in log.read_text(), log.read_text()[-3000:]
    # promptness is bounded by the subprocess timeout above (a hang guard), not asserted in seconds
    print(f"failing SLURM job -> snakemake exit {proc.returncode} after {seconds:.1f} s")
