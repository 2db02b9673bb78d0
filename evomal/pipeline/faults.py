"""Failpoints: a hard kill at a named point of a stage, for the fault-tolerance tests.

``EVOMAL_FAILPOINT=<stage>`` makes that stage SIGKILL its own process once it has done part of its work
(jobs run inside the Snakemake process, so this is exactly a kill of `snakemake` mid-stage).
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

STAGES = ("population", "filter", "compile", "optimize", "evaluate", "gather", "finalists", "best", "meta_test",
          "transfer", "track")


def failpoint(stage: str) -> None:
    if os.environ.get("EVOMAL_FAILPOINT") == stage:
        print(f"evomal: failpoint {stage}: killing process {os.getpid()}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("EVOMAL_PAUSEPOINT") == stage:
        gate = Path(os.environ["EVOMAL_PAUSE_FILE"])
        Path(f"{gate}.paused").write_text(str(os.getpid()))
        while not gate.exists():
            time.sleep(0.1)
