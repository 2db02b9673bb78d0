"""Fetching dataset files over HTTP(S) with checksum verification (pooch), and where they are kept.

Nothing here runs at import time and nothing is downloaded unless a caller asks for it explicitly
(``load_task(..., download=True)``). ``pooch.retrieve`` streams a download into a temporary file
beside its destination, checks its digest and only then moves it into place, so an interrupted or
corrupted transfer never leaves a file that looks complete; this module adds the mirrors (tried in
order) and messages that name the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RemoteFile", "file_digest", "verify_file", "download_file", "ensure_files", "default_data_root"]

_USER_AGENT = "evomal-dataset-fetcher/0.1 (+https://pypi.org/project/evomal)"


@dataclass(frozen=True)
class RemoteFile:
    """A file of a public dataset: its local name, mirrors to fetch it from and its digest."""

    filename: str
    urls: tuple[str, ...]
    algorithm: str  # "md5" or "sha256"
    digest: str

    @property
    def known_hash(self) -> str:
        """The digest in pooch's ``algorithm:hex`` form."""
        return f"{self.algorithm}:{self.digest}"


def default_data_root() -> Path:
    """Folder under which download-backed datasets live when no ``data_dir`` is given.

    ``$EVOMAL_DATA_DIR`` if set, else the user cache folder of this platform (platformdirs):
    ``$XDG_CACHE_HOME/evomal/datasets`` (``~/.cache/...``) on Linux, ``~/Library/Caches/...`` on macOS.
    """
    env = os.environ.get("EVOMAL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path("evomal", appauthor=False) / "datasets"


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    import pooch

    return pooch.file_hash(os.fspath(path), alg=algorithm)


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
    import pooch
    import requests

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    downloader = pooch.HTTPDownloader(timeout=timeout, headers={"User-Agent": _USER_AGENT})
    errors: list[str] = []
    mismatch: ValueError | None = None
    for url in remote.urls:
        try:
            return Path(pooch.retrieve(url, known_hash=remote.known_hash, fname=remote.filename, path=folder,
                                       downloader=downloader))
        except ValueError as exc:  # pooch's hash check; the download was deleted
            mismatch = ValueError(f"checksum mismatch for {dest} downloaded from {url}: {exc}; "
                                  "the download was discarded")
            errors.append(f"{url}: checksum mismatch")
        except (requests.exceptions.RequestException, OSError) as exc:
            errors.append(f"{url}: {exc}")
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
