"""Resume after a hard kill without ``--unlock``, keeping Snakemake's protection against concurrent runs.

Snakemake locks the working directory with files under ``.snakemake/locks``; a SIGKILL leaves them behind
and the next ``snakemake`` refuses to start. We record the PID of the run that holds the lock (in
``onstart``, which runs once the lock is taken) and, when the next run is parsed, remove the locks only
if that process is gone. A live holder keeps its locks, so two runs at once are still refused by
Snakemake with its own message.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

OWNER_FILE = "evomal-lock-owner.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_snakemake(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # cannot tell: assume it is, never remove a live run's locks
    return b"snakemake" in cmdline


def record_lock_owner(workdir: str | os.PathLike = ".") -> None:
    meta = Path(workdir) / ".snakemake"
    meta.mkdir(exist_ok=True)
    (meta / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def clear_stale_locks(workdir: str | os.PathLike = ".") -> int | None:
    """Remove the locks of a killed run; returns the dead holder's PID when it did."""
    meta = Path(workdir) / ".snakemake"
    locks = meta / "locks"
    lock_files = list(locks.glob("*.lock")) if locks.is_dir() else []
    if not lock_files:
        return None
    try:
        owner = json.loads((meta / OWNER_FILE).read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unknown holder: leave it to Snakemake (and `snakemake --unlock`)
    if host != socket.gethostname() or pid == os.getpid() or (_alive(pid) and _is_snakemake(pid)):
        return None
    for f in lock_files:
        f.unlink(missing_ok=True)
    return pid
