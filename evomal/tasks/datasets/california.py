"""California housing from the StatLib archive ``cal_housing.tgz`` (the one scikit-learn fetches)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from evomal.tasks.datasets import downloads
from evomal.tasks.datasets.downloads import RemoteFile
from evomal.tasks.datasets.files import _check_bool, _dataset_dir, _missing_files_error, _open_tar_gz
from evomal.tasks.datasets.registry import RawData, register_dataset

__all__ = ["read_california", "CALIFORNIA_FEATURES"]

_CALIFORNIA_REMOTE = RemoteFile(
    "cal_housing.tgz",
    ("https://ndownloader.figshare.com/files/5976036",),
    "sha256",
    "aaa5c9a6afe2225cc2aed2723682ae403280c4a3695a2ddda4ffb5d8215ea681",
)
_CALIFORNIA_MEMBER = "CaliforniaHousing/cal_housing.data"
CALIFORNIA_FEATURES = (
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
)


def read_california(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``cal_housing.tgz`` (or the extracted ``cal_housing.data``).

    The raw file has 9 comma-separated columns per block group: longitude, latitude, median age,
    total rooms, total bedrooms, population, households, median income, median house value. Returns
    the usual 8 features (``CALIFORNIA_FEATURES``: per-household averages for rooms, bedrooms and
    occupancy) and the median house value in units of 100,000 USD, shape ``(N, 1)``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "cal_housing.data"
    if path.name.endswith((".tgz", ".tar.gz")):
        try:
            with _open_tar_gz(path) as tar:
                try:
                    handle = tar.extractfile(_CALIFORNIA_MEMBER)
                except KeyError:
                    raise ValueError(f"{path}: archive has no member {_CALIFORNIA_MEMBER}") from None
                if handle is None:
                    raise ValueError(f"{path}: member {_CALIFORNIA_MEMBER} is not a regular file")
                text = handle.read()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"corrupted or truncated California housing archive {path}: {exc}") from exc
    else:
        text = path.read_bytes()
    try:
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: cannot parse the California housing data: {exc}") from exc
    if table.shape[0] == 0 or table.shape[1] != 9:
        raise ValueError(f"{path}: expected rows of 9 comma-separated values, got shape {table.shape}")
    lon, lat, age, rooms, bedrooms, population, households, income, value = table.T
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.stack(
            [income, age, rooms / households, bedrooms / households, population, population / households, lat, lon],
            axis=1,
        )
    return x, (value / 100000.0).reshape(-1, 1)


@register_dataset("california")
def _load_california(*, data_dir: str | None = None, download: bool = False) -> RawData:
    download = _check_bool("california", "download", download)
    folder = _dataset_dir("california", data_dir)
    archive = folder / _CALIFORNIA_REMOTE.filename
    extracted = folder / "cal_housing.data"
    if archive.is_file():
        source = archive
    elif extracted.is_file():
        source = extracted
    elif download:
        source = downloads.download_file(_CALIFORNIA_REMOTE, folder)
    else:
        raise _missing_files_error(
            "california", folder, [_CALIFORNIA_REMOTE.filename], " (an extracted cal_housing.data works too)"
        )
    x, y = read_california(source)
    return RawData(
        kind="regression",
        x_train=x,
        y_train=y,
        num_classes=1,
        preprocess="tabular",
        source=f"California housing, StatLib via scikit-learn's archive ({source})",
    )
