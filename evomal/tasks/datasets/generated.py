"""A disk cache for datasets that are generated, not read (MNIST-1D): generate once, load thereafter.

Generating MNIST-1D takes about 2.6 s (1.2 s of it importing the generator's matplotlib and scipy),
and every job of a search loads its task again: 20 jobs of the default experiment spent about a
minute regenerating the same arrays. The cache is exact: the arrays are stored as ``.npz`` (lossless
for every dtype) under a name that hashes everything the generated values depend on, the loader's
arguments and the versions of the generator and of numpy, so a changed package writes a new file
instead of reusing a stale one. A file that cannot be read is regenerated and replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

__all__ = ["generated_arrays", "cache_folder"]

#: bump when what a generator returns changes for the same arguments
FORMAT = 1


def cache_folder() -> Path:
    """``<data root>/generated`` (``$EVOMAL_DATA_DIR`` or the platform's user cache folder)."""
    from evomal.tasks.datasets.downloads import default_data_root

    return default_data_root() / "generated"


def _versions(packages) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cache_path(name: str, arguments: Mapping, packages=()) -> Path:
    key = json.dumps({"format": FORMAT, "dataset": name, "arguments": dict(arguments),
                      "versions": _versions(("numpy", *packages))}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_folder() / f"{name}-{digest}.npz"


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # missing or damaged: generate
        return None


def generated_arrays(name: str, arguments: Mapping, generate: Callable[[], Mapping[str, np.ndarray]],
                     *, packages=()) -> dict[str, np.ndarray]:
    """``generate()`` (a dict of arrays), read from the cache when it already ran with these arguments.

    ``packages`` are the distributions whose versions the generated values depend on.
    """
    from evomal.core.files import atomic_write_bytes

    path = cache_path(name, arguments, packages)
    cached = _read(path)
    if cached is not None:
        return cached
    arrays = {k: np.asarray(v) for k, v in generate().items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:  # two jobs generating at once write the same bytes; the later rename wins
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:  # a read-only cache folder costs the next job a regeneration, nothing more
        warnings.warn(f"cannot cache the generated {name} arrays at {path}: {exc}", stacklevel=2)
    return arrays
