"""Worker processes for the training jobs of a run whose jobs are threads of the Snakemake process.

The default profile runs jobs as threads (``force-use-threads``), so torch, MLflow and the workflow are
imported once per run instead of once per job. But two training jobs side by side then share one
interpreter lock: on 2 cores, two MNIST-1D trainings in threads took 1.6x as long as in two processes
(docs/benchmarks.md), because a step of a small network is mostly Python. So the jobs that train
(filter, optimize, evaluate, finalists, test runs) hand their stage function to a pool of worker
processes, one per core, started once per run (``spawn``: safe in a process with threads, and CUDA-safe).

A worker runs the same function with the same arguments, so results are the same as in the job's
thread. It dies with the Snakemake process: a watchdog thread ends it as soon as its parent is gone,
so a killed run leaves no worker writing files behind it.
"""
from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

__all__ = ["in_worker", "use_workers", "start_workers", "PARENT_ENV", "WORKERS_ENV"]

#: set in a worker: the pid of the Snakemake process it works for (evomal.pipeline.faults kills that one)
PARENT_ENV = "EVOMAL_WORKER_OF"
#: "<count>@<pid>": the process <pid> hands ``@in_worker`` calls to its pool of <count> workers
WORKERS_ENV = "EVOMAL_JOB_WORKERS"
_LOCK = threading.Lock()
_POOLS: dict[int, ProcessPoolExecutor] = {}  # one pool per Snakemake process (keyed by its pid)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)  # the run was killed: stop before writing anything more


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _init_worker(parent: int) -> None:
    os.environ[PARENT_ENV] = str(parent)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="evomal-parent-watch").start()
    # a spawned worker ends with a full interpreter teardown (torch's takes about a second) that the run
    # waits for before it exits; by then every job's files are written and closed, so skip it
    atexit.register(_exit_now)


def _warm() -> int:
    import torch  # noqa: F401  (what every training job imports first: about 1.5 s)

    return os.getpid()


def start_workers(count: int, *, warm: bool = False) -> ProcessPoolExecutor:
    """The run's pool of ``count`` workers (made once; later calls return the same pool). ``warm`` starts
    them now, each importing torch, in the background, so the first training job does not wait for it."""
    if os.environ.get(PARENT_ENV):  # a worker's own pool would start workers of workers, without end
        raise RuntimeError("a worker process cannot start worker processes")
    count = max(1, int(count))
    with _LOCK:
        pool = _POOLS.get(os.getpid())
        if pool is None:
            pool = ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(os.getpid(),))
            _POOLS[os.getpid()] = pool
            if warm:  # no worker is idle yet, so each submission starts one
                for _ in range(count):
                    pool.submit(_warm)
        return pool


def _plain(value):
    """Snakemake's paths are str subclasses that carry their rule: send plain values to a worker."""
    if isinstance(value, str):
        return str(value)
    if type(value) is tuple:
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):  # Snakemake's Namedlist too
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def use_workers(count: int) -> None:
    """From now on, calls of ``@in_worker`` functions made by this process run in its pool of ``count``
    workers (Snakemake's onstart calls this when jobs are threads of its process). The setting names
    this process, so the processes it starts (a SLURM job inherits the environment) run them inline."""
    os.environ[WORKERS_ENV] = f"{int(count)}@{os.getpid()}"
    if count:
        start_workers(count, warm=True)


def _workers() -> int:
    count, _, pid = os.environ.get(WORKERS_ENV, "").partition("@")
    return int(count) if count and pid == str(os.getpid()) else 0


def in_worker(fn):
    """``fn`` runs in a worker process of this run when ``use_workers`` asked for them (and this is not a
    worker): it returns its result or raises its exception, as if it ran right here."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        count = _workers()  # 0 in a worker too: the setting names the run's process, not the worker
        if not count:
            return fn(*args, **kwargs)
        pool = start_workers(count)
        try:  # the worker unpickles this wrapper by name and, not being the run's process, calls fn itself
            return pool.submit(wrapper, *_plain(list(args)), **_plain(kwargs)).result()
        except BrokenProcessPool as exc:  # a worker died (killed, out of memory): the next job gets a new pool
            with _LOCK:
                if _POOLS.get(os.getpid()) is pool:
                    del _POOLS[os.getpid()]
            raise RuntimeError(f"{fn.__name__}: the worker process running it died ({exc}); run snakemake "
                               "again to rerun this job, or set job_processes: false to train in the job's "
                               "thread") from None

    return wrapper
