"""Failpoints: a hard kill at a named point of a stage, for the fault-tolerance tests.

``EVOMAL_FAILPOINT=<stage>`` makes that stage SIGKILL its own process once it has done part of its work
(jobs run inside the Snakemake process, or in its worker processes, which kill it: so this is exactly a
kill of `snakemake` mid-stage).
``EVOMAL_PAUSEPOINT=<stage>`` with ``EVOMAL_PAUSE_FILE=<path>`` holds that stage instead, until ``<path>``
exists (it writes ``<path>.paused`` first): a run that stays alive, with its locks, while a test starts
others beside it. Unset, a failpoint costs two dictionary lookups.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from evomal.core.workers import PARENT_ENV

STAGES = ("population", "filter", "compile", "optimize", "evaluate", "gather", "finalists", "best", "test_run",
          "meta_test", "transfer", "track")


def failpoint(stage: str) -> None:
    if os.environ.get("EVOMAL_FAILPOINT") == stage:
        # a worker process (evomal.core.workers) kills the Snakemake process it works for, then itself
        run = int(os.environ.get(PARENT_ENV) or os.getpid())
        print(f"evomal: failpoint {stage}: killing process {run}", file=sys.stderr, flush=True)
        os.kill(run, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("EVOMAL_PAUSEPOINT") == stage:
        gate = Path(os.environ["EVOMAL_PAUSE_FILE"])
        Path(f"{gate}.paused").write_text(str(os.getpid()))
        while not gate.exists():
            time.sleep(0.1)
