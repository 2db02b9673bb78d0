"""Worker processes for training jobs (evomal.core.workers): same results, errors carried back, and no
worker outlives a killed run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from evomal.core import workers
from worker_helpers import dies, fails, whoami


class PathLike(str):
    """Stands in for Snakemake's paths: a str subclass carrying more than its text."""


@pytest.fixture
def no_workers(monkeypatch):
    monkeypatch.delenv(workers.WORKERS_ENV, raising=False)


def test_without_workers_the_function_runs_in_this_process(no_workers):
    assert whoami(3) == (os.getpid(), "int", 3)


def test_with_workers_it_runs_in_a_worker_and_returns_its_result(monkeypatch):
    monkeypatch.setenv(workers.WORKERS_ENV, f"1@{os.getpid()}")
    pid, kind, value = whoami({"path": PathLike("results/x"), "n": (1, 2)})
    assert pid != os.getpid()
    assert kind == "dict" and value == {"path": "results/x", "n": (1, 2)}
    assert type(value["path"]) is str  # plain values cross the process boundary
    assert whoami(1)[0] == pid  # the same worker serves the next call: torch is imported once per worker
    with pytest.raises(ValueError, match="a specific reason"):
        fails("a specific reason")


def test_a_dead_worker_fails_its_job_only_and_the_next_job_gets_a_new_pool(monkeypatch):
    monkeypatch.setenv(workers.WORKERS_ENV, f"1@{os.getpid()}")
    before = whoami(0)[0]
    with pytest.raises(RuntimeError, match="dies: the worker process running it died"):
        dies()
    after = whoami(0)[0]
    assert after not in (os.getpid(), before)


def test_a_setting_made_by_another_process_is_ignored(monkeypatch):
    """A SLURM job inherits the environment of the Snakemake process: it must not start a pool."""
    monkeypatch.setenv(workers.WORKERS_ENV, f"2@{os.getpid() + 1}")
    assert whoami(0)[0] == os.getpid()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended (reaped or not)
    except FileNotFoundError:
        return False


def test_no_worker_writes_after_its_run_is_killed(tmp_path):
    """SIGKILL of the run's process ends its workers before they write anything more."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from evomal.core.workers import use_workers
        from worker_helpers import write_when_told
        use_workers(1)
        write_when_told({str(tmp_path)!r})
    """)
    run = subprocess.Popen([sys.executable, "-c", script])
    for _ in range(1200):  # the worker says it started (its imports take seconds on a loaded machine)
        if (tmp_path / "started").exists() or run.poll() is not None:
            break
        time.sleep(0.1)
    assert (tmp_path / "started").exists(), "the worker never started"
    worker = int((tmp_path / "started").read_text())
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    for _ in range(1200):
        if not _alive(worker):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} outlived its killed run")
    (tmp_path / "go").write_text("")
    assert not (tmp_path / "done").exists()
