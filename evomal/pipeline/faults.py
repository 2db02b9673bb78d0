"""Failpoints: a hard kill at a named point of a stage, for the fault-tolerance tests.

``EVOMAL_FAILPOINT=<stage>`` makes that stage SIGKILL its own process once it has done part of its work
(jobs run inside the Snakemake process, so this is exactly a kill of `snakemake` mid-stage). Unset, a
failpoint costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
import sys

STAGES = ("population", "filter", "compile", "optimize", "evaluate", "gather", "finalists", "best", "meta_test",
          "transfer", "track")


def failpoint(stage: str) -> None:
    if os.environ.get("EVOMAL_FAILPOINT") == stage:
        print(f"evomal: failpoint {stage}: killing process {os.getpid()}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
