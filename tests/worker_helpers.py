"""Functions for tests/test_workers.py: module level, so that a worker process can import them by name."""
from __future__ import annotations

import os
import time
from pathlib import Path

from evomal.core.workers import in_worker


@in_worker
def whoami(value):
    return os.getpid(), type(value).__name__, value


@in_worker
def fails(message: str):
    raise ValueError(message)


@in_worker
def write_when_told(folder: str) -> None:
    """Say it started, wait for `go`, then write `done` (what a training job does at its end)."""
    folder = Path(folder)
    (folder / "started").write_text(str(os.getpid()))
    while not (folder / "go").exists():
        time.sleep(0.05)
    (folder / "done").write_text("written")


@in_worker
def dies() -> None:
    os._exit(3)  # what an out-of-memory kill looks like from outside
