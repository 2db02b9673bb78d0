"""CIFAR-10 / CIFAR-100 from the official binary version (fixed-length records, no pickle)."""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from evomal.tasks.datasets import downloads
from evomal.tasks.datasets.downloads import RemoteFile
from evomal.tasks.datasets.files import _check_bool, _dataset_dir, _missing_files_error, _open_tar_gz
from evomal.tasks.datasets.registry import RawData, register_dataset

__all__ = ["read_cifar"]

_CIFAR_SPECS = {
    # name: archive, md5, folder inside the archive, train members, test members
    "cifar10": (
        "cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
    ),
    "cifar100": (
        "cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
        "cifar-100-binary",
        ("train.bin",),
        ("test.bin",),
    ),
}
_CIFAR_IMAGE_BYTES = 3 * 32 * 32


def _cifar_records(raw: bytes, label_bytes: int, label_index: int, num_classes: int, where: str):
    record = label_bytes + _CIFAR_IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise ValueError(
            f"{where}: wrong length {len(raw)} bytes, not a whole number of {record}-byte CIFAR records"
        )
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = table[:, label_index].astype(np.int64)
    if labels.max() >= num_classes:
        raise ValueError(f"{where}: label {int(labels.max())} out of range for {num_classes} classes")
    images = table[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels


def read_cifar(path: str | os.PathLike, which: str = "cifar10", label_mode: str = "fine"):
    """Parse the official CIFAR binary distribution without unpacking it to disk.

    ``path`` is the ``.tar.gz`` archive or the folder it unpacks to (``cifar-10-batches-bin`` /
    ``cifar-100-binary``, or its parent). Returns ``(x_train, y_train, x_test, y_test)`` with uint8
    images of shape ``(N, 3, 32, 32)``. ``label_mode`` ("fine" or "coarse") matters for CIFAR-100 only.
    """
    if which not in _CIFAR_SPECS:
        raise ValueError(f"unknown CIFAR variant {which!r}; expected one of {sorted(_CIFAR_SPECS)}")
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    _, _, inner, train_members, test_members = _CIFAR_SPECS[which]
    if which == "cifar10":
        label_bytes, label_index, num_classes = 1, 0, 10
    else:
        label_bytes = 2
        label_index, num_classes = (1, 100) if label_mode == "fine" else (0, 20)
    path = Path(path)
    members = [*train_members, *test_members]
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        folder = path / inner if (path / inner).is_dir() else path
        for m in members:
            if not (folder / m).is_file():
                raise FileNotFoundError(f"CIFAR member file {folder / m} is missing")
            blobs[m] = (folder / m).read_bytes()
    else:
        try:
            with _open_tar_gz(path) as tar:
                for m in members:
                    try:
                        handle = tar.extractfile(f"{inner}/{m}")
                    except KeyError:
                        raise ValueError(f"{path}: archive has no member {inner}/{m}") from None
                    if handle is None:
                        raise ValueError(f"{path}: member {inner}/{m} is not a regular file")
                    blobs[m] = handle.read()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"corrupted or truncated CIFAR archive {path}: {exc}") from exc
    parts = {
        split: [_cifar_records(blobs[m], label_bytes, label_index, num_classes, f"{path}:{m}") for m in group]
        for split, group in (("train", train_members), ("test", test_members))
    }
    x_train = np.concatenate([p[0] for p in parts["train"]])
    y_train = np.concatenate([p[1] for p in parts["train"]])
    x_test = np.concatenate([p[0] for p in parts["test"]])
    y_test = np.concatenate([p[1] for p in parts["test"]])
    return x_train, y_train, x_test, y_test


def _load_cifar(which: str, data_dir: str | None, download: bool, label_mode: str = "fine") -> RawData:
    download = _check_bool(which, "download", download)
    archive, md5, inner, _, _ = _CIFAR_SPECS[which]
    folder = _dataset_dir(which, data_dir)
    source: Path
    if (folder / archive).is_file():
        source = folder / archive
    elif (folder / inner).is_dir():
        source = folder / inner
    elif download:
        url = f"https://www.cs.toronto.edu/~kriz/{archive}"
        source = downloads.download_file(RemoteFile(archive, (url,), "md5", md5), folder)
    else:
        raise _missing_files_error(which, folder, [archive], f" (the unpacked folder {inner}/ works too)")
    x_train, y_train, x_test, y_test = read_cifar(source, which, label_mode)
    if which == "cifar10":
        num_classes = 10
    else:
        num_classes = 100 if label_mode == "fine" else 20
    return RawData(
        kind="classification",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        preprocess="image",
        source=f"{which} official binary version ({source})",
    )


@register_dataset("cifar10")
def _load_cifar10(*, data_dir: str | None = None, download: bool = False) -> RawData:
    return _load_cifar("cifar10", data_dir, download)


@register_dataset("cifar100")
def _load_cifar100(*, data_dir: str | None = None, download: bool = False, label_mode: str = "fine") -> RawData:
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"option 'label_mode' of dataset 'cifar100' must be 'fine' or 'coarse', got {label_mode!r}")
    return _load_cifar("cifar100", data_dir, download, label_mode)
