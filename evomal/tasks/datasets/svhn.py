"""SVHN from the official cropped-digits ``.mat`` files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evomal.tasks.datasets import downloads
from evomal.tasks.datasets.downloads import RemoteFile
from evomal.tasks.datasets.files import _check_bool, _dataset_dir, _missing_files_error
from evomal.tasks.datasets.registry import RawData, register_dataset

__all__ = ["read_svhn_mat"]

_SVHN_REMOTES = [
    RemoteFile(
        "train_32x32.mat",
        ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
        "md5",
        "e26dedcc434d2e4c54c9b2d4a06d8373",
    ),
    RemoteFile(
        "test_32x32.mat",
        ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
        "md5",
        "eb5a983be6a315427106f1b164d9cef3",
    ),
]


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse an SVHN ``*_32x32.mat`` file: uint8 images ``(N, 3, 32, 32)`` and labels 0..9 (10 -> 0)."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        content = loadmat(path, variable_names=("X", "y"))
    except FileNotFoundError:
        raise
    except Exception as exc:  # scipy raises many types (MatReadError, ValueError, TypeError, ...)
        raise ValueError(f"{path} is not a readable SVHN .mat file: {exc}") from exc
    if "X" not in content or "y" not in content:
        raise ValueError(f"{path}: expected variables 'X' and 'y' in the SVHN .mat file")
    x, y = np.asarray(content["X"]), np.asarray(content["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise ValueError(f"{path}: expected X of shape (32, 32, 3, N) with N = {len(y)}, got {x.shape}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise ValueError(f"{path}: SVHN labels must lie in 1..10, found [{y.min()}, {y.max()}]")
    y[y == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False)
    return images, y


@register_dataset("svhn")
def _load_svhn(*, data_dir: str | None = None, download: bool = False) -> RawData:
    download = _check_bool("svhn", "download", download)
    folder = _dataset_dir("svhn", data_dir)
    missing = [r.filename for r in _SVHN_REMOTES if not (folder / r.filename).is_file()]
    if missing:
        if not download:
            raise _missing_files_error("svhn", folder, missing)
        downloads.ensure_files([r for r in _SVHN_REMOTES if r.filename in missing], folder)
    x_train, y_train = read_svhn_mat(folder / "train_32x32.mat")
    x_test, y_test = read_svhn_mat(folder / "test_32x32.mat")
    return RawData(
        kind="classification",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        preprocess="image",
        source=f"SVHN cropped digits ({folder})",
    )
