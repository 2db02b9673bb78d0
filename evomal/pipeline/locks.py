"""Runs that share a checkout or a results folder: Snakemake's locks after a kill, and evomal's claims.

**Snakemake's locks.** Snakemake locks the files of a run with ``.snakemake/locks/<n>.input.lock`` and
``<n>.output.lock``; a SIGKILL leaves them behind and the next ``snakemake`` of an overlapping run refuses
to start. Each run records, once it holds its locks (``onstart``), which lock files are its own, in a
record of its own (``.snakemake/evomal-runs/<pid>@<host>.json``), and holds an exclusive ``flock`` on that
record for as long as it lives; the kernel releases it however the process ends. A later run (at parse
time) removes the lock files of exactly those records whose flock it can take, the runs that are gone,
and matches them by identity (name, inode, mtime), so a lock file that a new run created under a reused
name is not touched either. A live run's locks are never removed, whichever runs were killed beside it.
Lock files that no record names (a run killed between taking its locks and its ``onstart``, or one
started with ``--no-hooks``) are left alone; :func:`lock_notes` says which and how to remove them.

**Claims.** Snakemake's locks live in the checkout, so two checkouts writing one ``results_dir`` never
see each other's, and Snakemake 9 removes the whole ``.snakemake/locks`` folder whenever any run ends,
live runs' locks included. Every run therefore also claims each experiment it writes: an flock on
``<results_dir>/.claims/<experiment>.lock``, held until the run ends. A second run of an experiment, from
any checkout, is refused with the holder's pid, host and folder; a killed run's claim goes with it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from evomal.core.files import make_temp, pid_alive, remove_orphans

#: the latest run to start in a checkout (its start time dates the progress lines, evomal.pipeline.progress)
OWNER_FILE = "evomal-lock-owner.json"
RECORDS = "evomal-runs"
CLAIMS = ".claims"


class ClaimError(RuntimeError):
    """Another live run writes an experiment this run would write."""


@dataclasses.dataclass
class Held:
    """Open files whose flocks a live run holds; closing them releases the flocks."""
    fds: list[int] = dataclasses.field(default_factory=list)
    paths: list[Path] = dataclasses.field(default_factory=list)  # records to delete when the run ends

    def release(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.paths.clear()


@dataclasses.dataclass
class LockState:
    """What :func:`clear_stale_locks` found: killed runs whose locks it removed, live runs, and lock files
    that no run recorded."""
    removed: list[int] = dataclasses.field(default_factory=list)  # pids of killed runs
    live: list[dict] = dataclasses.field(default_factory=list)  # records of live runs
    foreign: list[tuple[Path, dict]] = dataclasses.field(default_factory=list)  # another machine's, unheld
    unknown: list[Path] = dataclasses.field(default_factory=list)


def _host() -> str:
    return socket.gethostname()


def _identity(path: Path) -> dict | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"name": path.name, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}


def _key(ident: dict) -> tuple:
    return ident["name"], int(ident["inode"]), int(ident["mtime_ns"])


def _lock_files(meta: Path) -> list[Path]:
    locks = meta / "locks"
    return sorted(locks.glob("*.lock")) if locks.is_dir() else []


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_snakemake(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # cannot tell: assume it is, never remove a live run's locks
    return b"snakemake" in cmdline


def record_lock_owner(own_lock_files, workdir: str | os.PathLike = ".") -> Held:
    """Record this run's own Snakemake lock files and hold the record's flock (call in ``onstart``)."""
    meta = Path(workdir) / ".snakemake"
    records = meta / RECORDS
    records.mkdir(parents=True, exist_ok=True)
    held = [i for i in (_identity(Path(p)) for p in own_lock_files) if i is not None]
    record = {"pid": os.getpid(), "host": _host(), "workdir": str(Path(workdir).resolve()),
              "started": time.time(), "locks": held}
    final = records / f"{os.getpid()}@{_host()}.json"
    fd, tmp = make_temp(final)
    # locked before it gets its name: a cleaner never sees the record without its owner's flock
    fcntl.flock(fd, fcntl.LOCK_EX)
    data = json.dumps(record).encode()
    os.write(fd, data)
    os.fsync(fd)
    os.replace(tmp, final)
    owner_fd, owner_tmp = make_temp(meta / OWNER_FILE)
    with os.fdopen(owner_fd, "wb") as fh:
        fh.write(data)
    os.replace(owner_tmp, meta / OWNER_FILE)
    return Held([fd], [final])


def clear_stale_locks(workdir: str | os.PathLike = ".") -> LockState:
    """Remove the Snakemake lock files of runs that are gone (at parse time, before Snakemake locks)."""
    meta = Path(workdir) / ".snakemake"
    state = LockState()
    live_keys = set()
    remove_orphans(meta / RECORDS, recursive=False)  # a record a kill left half-made, never named
    for path in sorted((meta / RECORDS).glob("*.json")) if (meta / RECORDS).is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # removed meanwhile by its owner or another cleaner
            continue
        try:
            alive = not _try_flock(fd)
            try:
                record = json.loads(os.read(fd, 1 << 20).decode())
                pid, host, idents = int(record["pid"]), record["host"], record["locks"]
                keys = {_key(i) for i in idents}
            except (ValueError, KeyError, TypeError):
                continue  # unreadable: its locks stay (Snakemake refuses, lock_notes says what to do)
            # the flock tells; the pid is asked as well, in case the file system ignores flocks (not our
            # own pid: in a container every run may get the same one)
            gone = not alive and not (pid != os.getpid() and pid_alive(pid) and _is_snakemake(pid))
            if not gone or host != _host():  # alive, or on another machine: its flock may not reach here
                if alive or host == _host():
                    state.live.append(record)
                else:
                    state.foreign.append((path, record))
                live_keys |= keys
                continue
            stale = [lock for lock in _lock_files(meta) if (i := _identity(lock)) is not None and _key(i) in keys]
            for lock in stale:
                lock.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            if stale:  # (Snakemake may have removed them already: it clears the folder when a run ends)
                state.removed.append(pid)
        finally:
            os.close(fd)
    for lock in _lock_files(meta):
        ident = _identity(lock)
        if ident is not None and _key(ident) not in live_keys:
            state.unknown.append(lock)
    return state


def lock_notes(state: LockState) -> list[str]:
    """Lines for a person: what the cleanup did and, where a run may be refused, what to do about it."""
    notes = [f"removed the locks of a killed run (pid {pid}); resuming" for pid in state.removed]
    for record in state.live:
        notes.append(f"another run is active in this folder (pid {record['pid']} on {record['host']}); a run that "
                     "wants the same files is refused ('Directory cannot be locked'): wait for it to end, and do "
                     "not use --unlock, which removes the live run's locks too")
    for path, record in state.foreign:
        notes.append(f"{path} records a run on another machine ({record['host']}, pid {record['pid']}) that holds "
                     f"no lock here; if it is not active, remove the record: rm {path}")
    if state.unknown:
        names = " ".join(str(p) for p in state.unknown)
        notes.append(f"lock files that no run recorded: {names} (a run killed while it started, or one started "
                     "with --no-hooks); if `ps` shows no other snakemake in this folder, remove them: rm " + names)
    return notes


def _claim_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0).decode())
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["started"]))
        return f"pid {record['pid']} on {record['host']}, started {since} in {record['workdir']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "a run that is just starting"


def claim_experiments(results_dir: str | os.PathLike, experiments, *, workdir: str | os.PathLike = ".") -> Held:
    """Claim every experiment this run writes; raise ClaimError naming the live run that holds one."""
    folder = Path(results_dir) / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    held = Held()
    record = {"pid": os.getpid(), "host": _host(), "workdir": str(Path(workdir).resolve()), "started": time.time()}
    for name in sorted(set(experiments)):
        path = folder / f"{name}.lock"
        # never deleted, never replaced: a claim is the flock on this one inode
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_flock(fd):
            holder = _claim_holder(fd)
            os.close(fd)
            held.release()
            raise ClaimError(
                f"experiment {name} in {results_dir} is being written by another run ({holder}); this run is "
                f"refused so that the two do not overwrite each other. Wait for that run to end (a killed run's "
                f"claim ends with it: there is nothing to delete), or stop it: kill {holder.split()[1]}"
                if holder.startswith("pid ") else
                f"experiment {name} in {results_dir} is being claimed by another run that is starting; "
                f"this run is refused so that the two do not overwrite each other; wait for it to end")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**record, "experiment": name}).encode(), 0)
        held.fds.append(fd)
    return held
