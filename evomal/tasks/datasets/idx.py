"""IDX files: the parser ``read_idx`` and the MNIST and Fashion-MNIST datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evomal.tasks.datasets import downloads
from evomal.tasks.datasets.downloads import RemoteFile
from evomal.tasks.datasets.files import _check_bool, _dataset_dir, _missing_files_error, _read_bytes
from evomal.tasks.datasets.registry import RawData, register_dataset

__all__ = ["read_idx", "FASHION_MNIST_SYSTEM_DIR"]

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into an array; ``ValueError`` naming the file if invalid."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: wrong length, header announces {dims} ({expected} bytes of data), "
            f"file holds {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _find_idx(folder: Path, filename: str) -> Path | None:
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_set(dataset: str, folder: Path, source: str) -> RawData:
    paths = [_find_idx(folder, f) for f in _IDX_FILES]
    arrays = [read_idx(p) for p in paths]  # type: ignore[arg-type]
    x_train, y_train, x_test, y_test = arrays
    for (x, y), split, (px, py) in (
        ((x_train, y_train), "train", paths[:2]),
        ((x_test, y_test), "test", paths[2:]),
    ):
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(f"{px}: expected uint8 images of shape (N, H, W), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{py}: expected {len(x)} labels matching {px}, got shape {y.shape}")
        if len(y) and int(y.max()) >= 10:
            raise ValueError(f"{py}: labels must lie in 0..9, found {int(y.max())}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"dataset {dataset!r}: train and test images differ in size")
    return RawData(
        kind="classification",
        x_train=x_train[:, None],
        y_train=y_train.astype(np.int64),
        x_test=x_test[:, None],
        y_test=y_test.astype(np.int64),
        num_classes=10,
        preprocess="image",
        source=f"{source} ({folder})",
    )


def _idx_remotes(mirrors: tuple[str, ...], md5s: tuple[str, ...]) -> list[RemoteFile]:
    return [
        RemoteFile(name, tuple(m + name for m in mirrors), "md5", digest)
        for name, digest in zip(_IDX_FILES, md5s)
    ]


_FASHION_REMOTES = _idx_remotes(
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
)

_MNIST_REMOTES = _idx_remotes(
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
)


def _missing_idx(folder: Path) -> list[str]:
    return [f for f in _IDX_FILES if _find_idx(folder, f) is None]


@register_dataset("fashion_mnist")
def _load_fashion_mnist(*, data_dir: str | None = None, download: bool = False) -> RawData:
    download = _check_bool("fashion_mnist", "download", download)
    if data_dir is not None:
        folders = [Path(data_dir).expanduser()]
    else:
        # the Debian package first, then the per-user download folder
        folders = [Path(FASHION_MNIST_SYSTEM_DIR), _dataset_dir("fashion_mnist", None)]
    for folder in folders:
        if not _missing_idx(folder):
            return _load_idx_set("fashion_mnist", folder, "Fashion-MNIST IDX files")
    target = folders[-1]
    if download:
        missing = _missing_idx(target)
        downloads.ensure_files([r for r in _FASHION_REMOTES if r.filename in missing], target)
        return _load_idx_set("fashion_mnist", target, "Fashion-MNIST IDX files")
    where = " or ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"dataset 'fashion_mnist': the IDX files ({', '.join(_IDX_FILES)}) were not found in {where}. "
        "Install them with `apt-get install dataset-fashion-mnist` (files under "
        f"{FASHION_MNIST_SYSTEM_DIR}), or pass download=True (option `download: true`) to fetch the "
        "official files with checksum verification, or pass data_dir=<folder holding the IDX files "
        "downloaded from the official URLs>."
    )


@register_dataset("mnist")
def _load_mnist(*, data_dir: str | None = None, download: bool = False) -> RawData:
    download = _check_bool("mnist", "download", download)
    folder = _dataset_dir("mnist", data_dir)
    missing = _missing_idx(folder)
    if missing:
        if not download:
            raise _missing_files_error("mnist", folder, missing)
        downloads.ensure_files([r for r in _MNIST_REMOTES if r.filename in missing], folder)
    return _load_idx_set("mnist", folder, "MNIST IDX files")
