"""Resume after a hard kill without ``--unlock``, keeping Snakemake's protection against concurrent runs.

Snakemake locks the working directory with files under ``.snakemake/locks``; a SIGKILL leaves them behind
and the next ``snakemake`` refuses to start. We record the PID of the run that holds the lock, together
with the identity (name, inode, mtime) of the lock files it holds (in ``onstart``, which runs once the
lock is taken), and, when the next run is parsed, remove exactly those lock files, and only if that
process is gone.

Lock files that the record does not name are never removed: Snakemake takes its lock a moment before
``onstart`` runs, and in that moment the record on disk is still the one of an earlier run (finished or
killed, so its PID is dead). Matching the lock files by identity keeps a second run, started in that
moment, from removing the new run's live locks; Snakemake then refuses it with its own message
("Directory cannot be locked"). A run killed inside that moment leaves locks no record names: the
next run is refused too, and ``snakemake --unlock`` (once no other run is active) clears them.
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


def _lock_files(meta: Path) -> list[Path]:
    locks = meta / "locks"
    return sorted(locks.glob("*.lock")) if locks.is_dir() else []


def _identity(path: Path) -> dict | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"name": path.name, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}


def record_lock_owner(workdir: str | os.PathLike = ".") -> None:
    """Record this process and the lock files it holds (call once Snakemake holds its lock)."""
    from evomal.core.files import atomic_write_bytes

    meta = Path(workdir) / ".snakemake"
    meta.mkdir(exist_ok=True)
    held = [i for i in map(_identity, _lock_files(meta)) if i is not None]
    record = {"pid": os.getpid(), "host": socket.gethostname(), "locks": held}
    # atomic: a run parsed at this moment reads the old record or the new one, never half of one
    atomic_write_bytes(meta / OWNER_FILE, json.dumps(record).encode())


def clear_stale_locks(workdir: str | os.PathLike = ".") -> int | None:
    """Remove the locks of a killed run; returns the dead holder's PID when it did."""
    meta = Path(workdir) / ".snakemake"
    lock_files = _lock_files(meta)
    if not lock_files:
        return None
    try:
        owner = json.loads((meta / OWNER_FILE).read_text())
        pid, host, held = int(owner["pid"]), owner["host"], owner["locks"]
        recorded = {(h["name"], int(h["inode"]), int(h["mtime_ns"])) for h in held}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unknown holder: leave it to Snakemake (and `snakemake --unlock`)
    if host != socket.gethostname() or pid == os.getpid() or (_alive(pid) and _is_snakemake(pid)):
        return None
    stale = []
    for f in lock_files:
        ident = _identity(f)
        if ident is not None and (ident["name"], ident["inode"], ident["mtime_ns"]) in recorded:
            stale.append(f)
    if not stale:
        return None  # the locks there now are not the dead run's: a live run may hold them
    for f in stale:
        f.unlink(missing_ok=True)
    return pid
