"""Local files of the download-backed datasets: their folder, the missing-files error, the
``download`` option check and reading gzip / tar.gz files completely (so truncation surfaces)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from evomal.tasks.datasets import downloads


def _check_bool(dataset: str, option: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"option {option!r} of dataset {dataset!r} must be true or false, got {value!r}")
    return bool(value)


def _dataset_dir(dataset: str, data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else downloads.default_data_root() / dataset


def _missing_files_error(dataset: str, folder: Path, names: list[str], extra: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset {dataset!r}: missing file(s) {', '.join(names)} in {folder}{extra}. "
        f"Pass download=True (option `download: true`) to fetch them from the official source with "
        f"checksum verification, or pass data_dir=<folder holding the official files>."
    )


def _read_bytes(path: Path) -> bytes:
    """Bytes of ``path``, gunzipped when it is a gzip file (detected by its magic bytes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read()
            return fh.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"corrupted or truncated gzip file {path}: {exc}") from exc


def _open_tar_gz(path: Path) -> tarfile.TarFile:
    """Open a ``.tar.gz`` after decompressing it completely, so truncation and CRC errors surface
    (a lazily read archive would happily return early members of a truncated file)."""
    raw = _read_bytes(path)
    tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    tar.getmembers()  # walk every header: a cut-off tar stream fails here
    return tar
