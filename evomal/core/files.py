"""Atomic writes and safe, explicit reads of result files (DESIGN §3).

Every file is written to a temporary name in its own directory and renamed into place, so an interrupted
job never leaves a half file that looks complete. Reads never execute code (no pickle) and a damaged file
is reported by name with the way to repair it.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd



class ResultFileError(RuntimeError):
    """A results file that is missing, truncated or corrupted."""


def _repair_hint(path: Path) -> str:
    """How to recompute a damaged or missing file (docs/faults.md).

    Deleting a file alone is not enough: Snakemake does not recreate a missing intermediate file whose
    downstream outputs exist, so the file is named as a target. Per-candidate files are no Snakemake
    outputs; the generation's shard manifests are deleted so its per-candidate stages run again.
    """
    if len(path.parts) >= 3 and path.parts[-3] == "candidates":
        gen_dir = path.parents[2]
        return (f"to repair it, delete {path} and the folder {gen_dir / 'shards'}, then run `snakemake` (the "
                "generation's candidate stages, or its check job once the generation is gathered, reuse every "
                "intact candidate file and recompute the deleted one)")
    return (f"to repair it, delete {path}, then run `snakemake` (recomputes it and what depends on it; "
            f"`snakemake {path}` first recomputes only it)")


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    # os.umask() can only be read by setting it, which races with other threads creating files
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _host() -> str:
    return socket.gethostname().split(".")[0]


#: ``.<name>.<random>.<pid>@<host>.tmp``: who wrote a temporary file, so that a later run can tell
#: one left by a killed writer (removable) from one being written now (evomal.core.files.remove_orphans)
_TEMP_NAME = re.compile(r"\..+\.(?P<pid>\d+)@(?P<host>[^/@]+)\.tmp")


def make_temp(path: str | os.PathLike) -> tuple[int, str]:
    """A new temporary file beside ``path``, named after its writer, with the permissions a plain file
    gets (mkstemp makes 0600; results and the MLflow store are shared like any file). Returns (fd, name)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{os.getpid()}@{_host()}.tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def remove_orphans(folder: str | os.PathLike, *, recursive: bool = True, unnamed: bool = False) -> list[Path]:
    """Delete the temporary files in ``folder`` whose writer is dead (a kill between writing and renaming).

    A file written on another machine is kept (its writer cannot be asked), and so is one without a
    writer in its name (older versions) unless ``unnamed``: the caller knows nobody writes there now.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        m = _TEMP_NAME.fullmatch(tmp.name)
        orphan = (not pid_alive(int(m["pid"])) if m["host"] == _host() else False) if m else unnamed
        if orphan and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_or_str(obj):
    """JSON has no inf/nan: store them as strings so files stay standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: _finite_or_str(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_str(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_finite_or_str(obj), indent=1, sort_keys=False, default=_json_default,
                      allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, dumps_json(obj).encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ResultFileError(f"missing results file {path}; {_repair_hint(path)}") from None
    try:
        return json.loads(data.decode("utf-8"))  # write_json writes UTF-8, whatever the locale
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"corrupted results file {path}: not valid JSON ({exc}); "
                              f"{_repair_hint(path)}") from None


def number(value) -> float:
    """Inverse of the inf/nan encoding of write_json."""
    return float(value)


def write_tensors(path: str | os.PathLike, obj: dict) -> None:
    """A dict of tensors, numbers, strings and lists, loadable with ``torch.load(weights_only=True)``."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_tensors(path: str | os.PathLike) -> dict:
    import torch

    path = Path(path)
    if not path.exists():
        raise ResultFileError(f"missing results file {path}; {_repair_hint(path)}")
    try:
        # weights_only: a results folder from someone else must never execute code when opened
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged archives
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's message carries terminal colours
        # a refused object: the one line that names it, not torch's advice to load it unsafely
        refused = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        what = (f"{refused[1].split('. Please')[0]}; the weights-only loader refuses objects that could run code"
                if refused else text)
        raise ResultFileError(f"corrupted results file {path}: cannot be loaded as tensors "
                              f"({type(exc).__name__}: {what}); {_repair_hint(path)}") from None


def write_tsv(path: str | os.PathLike, frame: "pd.DataFrame") -> None:
    atomic_write_bytes(path, frame.to_csv(sep="\t", index=False, lineterminator="\n").encode())


def read_tsv(path: str | os.PathLike) -> "pd.DataFrame":
    import pandas as pd  # lazily: loss files are read where pandas is not wanted (evomal.load_loss)

    path = Path(path)
    if not path.exists():
        raise ResultFileError(f"missing results file {path}; {_repair_hint(path)}")
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # write_tsv ends every line; pandas would read half a row
        raise ResultFileError(f"corrupted results file {path}: truncated (its last line is incomplete); "
                              f"{_repair_hint(path)}")
    try:
        return pd.read_csv(io.BytesIO(data), sep="\t", keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"corrupted results file {path}: not a valid table ({exc}); "
                              f"{_repair_hint(path)}") from None


def fingerprint(*parts: Any) -> str:
    """Stable hash of JSON-able inputs: a finished per-candidate file is reused only if it matches."""
    return hashlib.sha256(dumps_json(parts).encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def record_seconds(output_path, stage: str, seconds: float, *, folder=None) -> None:
    """Compute seconds of a job, beside its output in ``timings/`` (kept out of the result files so those
    are identical whenever they are recomputed), or in ``folder``/timings; the pipeline benchmark adds
    them up."""
    out = Path(output_path)
    if folder is None:
        folder = out.parent.parent if out.parent.name in ("shards", "test_runs", "finalist_scores") else out.parent
    folder = Path(folder)
    # the wall-clock end lets a benchmark lay the jobs out in time (bench/bench_default_wall.py)
    write_json(folder / "timings" / f"{stage}.json", {"stage": stage, "seconds": seconds, "end": time.time()})
