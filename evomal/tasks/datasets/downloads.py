"""Fetching dataset files over HTTP(S) with checksum verification.

Only the standard library is used (``urllib``). Nothing here runs at import time and nothing is
downloaded unless a caller asks for it explicitly (``load_task(..., download=True)``).

A download is written to a temporary file next to its destination, verified against the expected
digest, and only then renamed into place, so an interrupted or corrupted transfer never leaves a
file that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RemoteFile", "file_digest", "verify_file", "download_file", "ensure_files", "default_data_root"]

_CHUNK = 1 << 20
_USER_AGENT = "evomal-dataset-fetcher/0.1 (+https://pypi.org/project/evomal)"


@dataclass(frozen=True)
class RemoteFile:
    """A file of a public dataset: its local name, mirrors to fetch it from and its digest."""

    filename: str
    urls: tuple[str, ...]
    algorithm: str  # "md5" or "sha256"
    digest: str


def default_data_root() -> Path:
    """Folder under which download-backed datasets live when no ``data_dir`` is given.

    ``$EVOMAL_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/evomal/datasets`` (``~/.cache/...``).
    """
    env = os.environ.get("EVOMAL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "evomal" / "datasets"


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, algorithm: str, expected: str) -> None:
    """Raise ``ValueError`` naming the file when its digest differs from ``expected``."""
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise ValueError(
            f"checksum mismatch for {os.fspath(path)}: {algorithm} is {actual}, expected {expected}; "
            "the file is corrupted or incomplete, delete it and download again"
        )


def download_file(remote: RemoteFile, folder: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Download ``remote`` into ``folder`` (trying its mirrors in order) and verify its checksum.

    Returns the final path. A checksum mismatch raises ``ValueError`` naming the file (and the file is
    not kept); when no mirror can be reached an ``OSError`` lists every attempt.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    errors: list[str] = []
    mismatch: ValueError | None = None
    for url in remote.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
            actual = file_digest(tmp, remote.algorithm)
            if actual.lower() != remote.digest.lower():
                mismatch = ValueError(
                    f"checksum mismatch for {dest} downloaded from {url}: {remote.algorithm} is {actual}, "
                    f"expected {remote.digest}; the download was discarded"
                )
                errors.append(f"{url}: checksum mismatch")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            if tmp.exists():
                tmp.unlink()
    if mismatch is not None:
        raise mismatch
    raise OSError(f"could not download {remote.filename} into {folder}; tried: " + "; ".join(errors))


def ensure_files(
    remotes: Sequence[RemoteFile], folder: str | os.PathLike, *, timeout: float = 60.0
) -> list[Path]:
    """Download every file of ``remotes`` that is missing from ``folder``; return all paths."""
    paths = []
    for remote in remotes:
        path = Path(folder) / remote.filename
        if not path.exists():
            path = download_file(remote, folder, timeout=timeout)
        paths.append(path)
    return paths
