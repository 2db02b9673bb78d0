"""Registry of learning tasks: datasets with fixed, seeded train / validation / test splits.

``load_task(name, seed=..., device=...)`` returns a :class:`Task` whose tensors already live on the
requested device; the learning engine samples batches by index (no ``DataLoader``).

Splits (DESIGN section 1.7)
    classification with an official test set: a stratified 10 % of the official training set is
    validation, the official test set is test. Classification without one (scikit-learn's bundled
    sets): a stratified 20 % test split first, then 10 % of the remainder as validation.
    Regression: 60 / 20 / 20 train / validation / test.
    All splits are drawn from ``numpy.random.Generator`` objects seeded from ``seed`` (or from the
    generic ``split_seed`` option when given); the global RNGs are never touched.

Preprocessing (statistics from the training split only)
    tabular features are standardised per feature, images are scaled to [0, 1] and normalised per
    channel, 1-D signals (MNIST-1D) are standardised with one global mean / std; regression targets
    are standardised too (the statistics are kept in ``Task.info``).

Datasets that need a download (MNIST, CIFAR-10/100, SVHN, California housing) are only fetched when
``download=True`` is passed; the file parsers (``read_idx``, ``read_cifar``, ``read_svhn_mat``,
``read_california``) are separate from the downloading so they can be tested on small files.
"""

from __future__ import annotations

import gzip
import inspect
import io
import os
import random
import tarfile
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evomal.tasks import downloads
from evomal.tasks.downloads import RemoteFile

__all__ = [
    "Task",
    "RawData",
    "load_task",
    "list_datasets",
    "register_dataset",
    "dataset_options",
    "read_idx",
    "read_cifar",
    "read_svhn_mat",
    "read_california",
    "FASHION_MNIST_SYSTEM_DIR",
]

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

VALIDATION_FRACTION = 0.1  # of the (official or derived) training set, classification
TEST_FRACTION = 0.2  # classification sets without an official test split
REGRESSION_FRACTIONS = (0.6, 0.2, 0.2)  # train / validation / test

# Options every dataset accepts (handled by load_task itself).
COMMON_OPTIONS = ("split_seed",)


# --------------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Task:
    """A dataset with its three splits, preprocessed and on one device.

    ``x_*`` are float32 of shape ``(N, *input_shape)``. Classification targets are int64 class
    indices of shape ``(N,)``; regression targets are float32 of shape ``(N, 1)``.
    ``info`` holds provenance and preprocessing statistics: ``source``, ``split_seed``,
    ``indices`` (per split, row indices into the pool the split was drawn from: the official
    training set for train/val when there is an official test set), ``x_mean``/``x_std`` and, for
    regression, ``y_mean``/``y_std`` (to express errors in original units: ``mse * y_std**2``).
    """

    name: str
    kind: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    info: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.kind == "classification" else 1

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in ("train", "val", "test"):
            raise ValueError(f"unknown split {which!r}; expected 'train', 'val' or 'test'")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")


@dataclass
class RawData:
    """What a dataset loader returns: unsplit (or officially split) raw arrays.

    ``x_test``/``y_test`` are ``None`` when the dataset has no official test split.
    ``preprocess`` is ``"tabular"`` (per-feature standardisation), ``"image"`` (uint8 or [0, 255]
    values, scaled to [0, 1] then per-channel normalisation; arrays are ``(N, C, H, W)``) or
    ``"signal"`` (one global mean / std).
    """

    kind: str
    x_train: np.ndarray
    y_train: np.ndarray
    num_classes: int
    preprocess: str
    source: str
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


Loader = Callable[..., RawData]


@dataclass(frozen=True)
class _DatasetEntry:
    name: str
    loader: Loader
    options: dict[str, Any]  # option name -> default
    uses_data_dir: bool


_DATASETS: dict[str, _DatasetEntry] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding a loader to the registry under ``name``.

    The loader is called with keyword arguments only. Its keyword-only parameters (with defaults)
    are the dataset's options; a parameter named ``data_dir`` receives ``load_task``'s ``data_dir``.
    It returns a :class:`RawData`.
    """

    def decorator(fn: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        options: dict[str, Any] = {}
        uses_data_dir = False
        for pname, param in inspect.signature(fn).parameters.items():
            if pname == "data_dir":
                uses_data_dir = True
                continue
            if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.default is inspect.Parameter.empty:
                raise TypeError(
                    f"loader of dataset {name!r}: parameter {pname!r} must be keyword-only with a default"
                )
            options[pname] = param.default
        _DATASETS[name] = _DatasetEntry(name, fn, options, uses_data_dir)
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    return sorted(_DATASETS)


def dataset_options(name: str) -> dict[str, Any]:
    """Options of dataset ``name`` with their defaults (generic options included)."""
    entry = _entry(name)
    return {**entry.options, "split_seed": None}


def _entry(name: str) -> _DatasetEntry:
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        ) from None


# --------------------------------------------------------------------------------------------------
# load_task
# --------------------------------------------------------------------------------------------------


def load_task(
    name: str,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    train_size: int | None = None,
    data_dir: str | None = None,
    **options: Any,
) -> Task:
    """Load dataset ``name``, split it (seeded by ``seed``), preprocess it and move it to ``device``.

    ``train_size`` keeps a seeded (stratified for classification) subset of the training split.
    ``options`` are dataset specific (see ``dataset_options(name)``) plus ``split_seed``: when given,
    the splits and the ``train_size`` subset are drawn from it instead of ``seed``.
    Raises ``ValueError`` for an unknown dataset or option, a too large ``train_size`` or data with
    NaN / inf values; ``FileNotFoundError`` when files of a download-backed dataset are missing.
    """
    entry = _entry(name)
    allowed = sorted([*entry.options, *COMMON_OPTIONS])
    for key in options:
        if key not in entry.options and key not in COMMON_OPTIONS:
            raise ValueError(
                f"unknown option {key!r} for dataset {name!r}; allowed options: "
                f"{', '.join(allowed) if allowed else '(none)'}"
            )
    split_seed = options.pop("split_seed", None)
    split_seed = seed if split_seed is None else split_seed
    _check_int("seed", seed)
    _check_int("split_seed", split_seed)
    if train_size is not None:
        _check_int("train_size", train_size)
        if train_size < 1:
            raise ValueError(f"train_size must be a positive integer, got {train_size}")

    kwargs = dict(options)
    if entry.uses_data_dir:
        kwargs["data_dir"] = data_dir
    raw = entry.loader(**kwargs)

    return _make_task(name, raw, split_seed=split_seed, train_size=train_size, device=device)


def _check_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    # Independent streams for the different random choices of one seed.
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), stream]))


_STREAM_TEST, _STREAM_VAL, _STREAM_SUBSET = 1, 2, 3


def _make_task(
    name: str, raw: RawData, *, split_seed: int, train_size: int | None, device: str | torch.device
) -> Task:
    if raw.kind not in ("classification", "regression"):
        raise ValueError(f"dataset {name!r}: unknown kind {raw.kind!r}")
    classification = raw.kind == "classification"
    x_pool, y_pool = np.asarray(raw.x_train), np.asarray(raw.y_train)
    if len(x_pool) != len(y_pool):
        raise ValueError(f"dataset {name!r}: {len(x_pool)} inputs but {len(y_pool)} targets")

    if classification:
        y_pool = _class_labels(name, "train", y_pool, raw.num_classes)
        if raw.x_test is None:
            n_test = int(round(TEST_FRACTION * len(y_pool)))
            rest, test_idx = _stratified_take(y_pool, n_test, _rng(split_seed, _STREAM_TEST))
            x_test, y_test = x_pool[test_idx], y_pool[test_idx]
            x_pool, y_pool = x_pool[rest], y_pool[rest]
            pool_idx = rest
        else:
            x_test = np.asarray(raw.x_test)
            y_test = _class_labels(name, "test", np.asarray(raw.y_test), raw.num_classes)
            test_idx = np.arange(len(y_test))
            pool_idx = np.arange(len(y_pool))
        n_val = int(round(VALIDATION_FRACTION * len(y_pool)))
        train_rel, val_rel = _stratified_take(y_pool, n_val, _rng(split_seed, _STREAM_VAL))
    else:
        if raw.x_test is not None:
            raise ValueError(f"dataset {name!r}: regression sets are split 60/20/20 from one pool")
        y_pool = y_pool.reshape(len(y_pool), -1)
        if y_pool.shape[1] != 1:
            raise ValueError(f"dataset {name!r}: regression targets must be one column")
        n = len(y_pool)
        perm = _rng(split_seed, _STREAM_TEST).permutation(n)
        n_test = int(round(REGRESSION_FRACTIONS[2] * n))
        n_val = int(round(REGRESSION_FRACTIONS[1] * n))
        test_idx = np.sort(perm[:n_test])
        rest = np.sort(perm[n_test:])
        x_test, y_test = x_pool[test_idx], y_pool[test_idx]
        x_pool, y_pool = x_pool[rest], y_pool[rest]
        pool_idx = rest
        val_rel = np.sort(perm[n_test : n_test + n_val])
        val_rel = np.searchsorted(rest, val_rel)
        keep = np.ones(len(rest), dtype=bool)
        keep[val_rel] = False
        train_rel = np.flatnonzero(keep)

    if train_size is not None:
        if train_size > len(train_rel):
            raise ValueError(
                f"train_size={train_size} is larger than the training split of dataset {name!r} "
                f"(maximum {len(train_rel)})"
            )
        sub_rng = _rng(split_seed, _STREAM_SUBSET)
        if classification:
            _, chosen = _stratified_take(y_pool[train_rel], train_size, sub_rng)
        else:
            chosen = np.sort(sub_rng.choice(len(train_rel), size=train_size, replace=False))
        train_rel = train_rel[chosen]

    x_train, y_train = x_pool[train_rel], y_pool[train_rel]
    x_val, y_val = x_pool[val_rel], y_pool[val_rel]
    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    for split, (x, y) in splits.items():
        _check_finite(name, split, "inputs", x)
        _check_finite(name, split, "targets", y)
        if len(x) == 0:
            raise ValueError(f"dataset {name!r}: split {split!r} is empty")

    info: dict[str, Any] = {
        "source": raw.source,
        "split_seed": int(split_seed),
        "indices": {
            "train": pool_idx[train_rel],
            "val": pool_idx[val_rel],
            "test": test_idx,
        },
    }
    xs = _normalise_inputs(raw.preprocess, x_train, x_val, x_test, info)
    if classification:
        ys = [y.astype(np.int64) for y in (y_train, y_val, y_test)]
        num_classes = int(raw.num_classes)
    else:
        y_train64 = y_train.astype(np.float64)
        mean, std = float(y_train64.mean()), float(y_train64.std())
        std = std if std > 1e-12 else 1.0
        info["y_mean"], info["y_std"] = mean, std
        ys = [((y.astype(np.float64) - mean) / std).astype(np.float32) for y in (y_train, y_val, y_test)]
        num_classes = 1
    for split, x in zip(("train", "val", "test"), xs):
        _check_finite(name, split, "preprocessed inputs", x)

    tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for pair in zip(xs, ys) for a in pair]
    return Task(
        name=name,
        kind=raw.kind,
        x_train=tensors[0],
        y_train=tensors[1],
        x_val=tensors[2],
        y_val=tensors[3],
        x_test=tensors[4],
        y_test=tensors[5],
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        num_classes=num_classes,
        info=info,
    )


def _class_labels(name: str, split: str, y: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == "f":
        _check_finite(name, split, "targets", y)
        if not np.all(y == np.round(y)):
            raise ValueError(f"dataset {name!r}, split {split!r}: class labels must be integers")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"dataset {name!r}, split {split!r}: labels must lie in [0, {num_classes}), "
            f"found range [{y.min()}, {y.max()}]"
        )
    return y


def _check_finite(name: str, split: str, what: str, a: np.ndarray) -> None:
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise ValueError(
            f"dataset {name!r}: the {split} split has {bad} NaN or infinite value(s) in its {what}; "
            "clean the data before training"
        )


def _stratified_take(y: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into (rest, taken) with ``n_take`` taken, class proportions kept.

    Per-class counts follow the largest-remainder rule (ties broken at random), so the total is
    exact. Both index arrays are sorted.
    """
    n = len(y)
    if not 0 <= n_take <= n:
        raise ValueError(f"cannot take {n_take} of {n} samples")
    classes, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    exact = counts * (n_take / n) if n else counts.astype(float)
    alloc = np.floor(exact).astype(np.int64)
    missing = n_take - int(alloc.sum())
    if missing:
        order = np.lexsort((rng.random(len(classes)), -(exact - alloc)))
        alloc[order[:missing]] += 1
    taken = []
    by_class = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for c in range(len(classes)):
        members = by_class[starts[c] : starts[c + 1]]
        taken.append(rng.permutation(members)[: alloc[c]])
    take = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[take] = False
    return np.flatnonzero(mask), take


def _normalise_inputs(
    mode: str, x_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray, info: dict[str, Any]
) -> list[np.ndarray]:
    if mode == "tabular":
        flat = x_train.reshape(len(x_train), -1).astype(np.float64)
        mean = flat.mean(axis=0)
        std = flat.std(axis=0)
        std[std < 1e-12] = 1.0
        shape = (1, *x_train.shape[1:])
        mean, std = mean.reshape(shape), std.reshape(shape)
        info["x_mean"], info["x_std"] = mean.ravel().tolist(), std.ravel().tolist()
        return [((x.astype(np.float64) - mean) / std).astype(np.float32) for x in (x_train, x_val, x_test)]
    if mode == "signal":
        mean, std = float(x_train.mean(dtype=np.float64)), float(x_train.std(dtype=np.float64))
        std = std if std > 1e-12 else 1.0
        info["x_mean"], info["x_std"] = [mean], [std]
        return [((x.astype(np.float64) - mean) / std).astype(np.float32) for x in (x_train, x_val, x_test)]
    if mode == "image":
        if x_train.ndim != 4:
            raise ValueError(f"image data must be (N, C, H, W), got shape {x_train.shape}")
        scaled = [x.astype(np.float32) / np.float32(255.0) for x in (x_train, x_val, x_test)]
        mean = scaled[0].mean(axis=(0, 2, 3), dtype=np.float64)
        # per-channel std through E[x^2] - E[x]^2 (float64 accumulation), cheaper than x.std
        sq = np.einsum("nchw,nchw->c", scaled[0], scaled[0], dtype=np.float64) / (
            scaled[0].shape[0] * scaled[0].shape[2] * scaled[0].shape[3]
        )
        std = np.sqrt(np.maximum(sq - mean**2, 0.0))
        std[std < 1e-12] = 1.0
        info["x_mean"], info["x_std"] = mean.tolist(), std.tolist()
        m = mean.astype(np.float32).reshape(1, -1, 1, 1)
        s = std.astype(np.float32).reshape(1, -1, 1, 1)
        out = []
        for x in scaled:
            x -= m
            x /= s
            out.append(x)
        return out
    raise ValueError(f"unknown preprocessing mode {mode!r}")


# --------------------------------------------------------------------------------------------------
# Option helpers
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# scikit-learn bundled sets (offline)
# --------------------------------------------------------------------------------------------------


def _sklearn_classification(loader_name: str, source: str) -> RawData:
    from sklearn import datasets as skd

    bunch = getattr(skd, loader_name)()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    return RawData(
        kind="classification",
        x_train=x,
        y_train=y,
        num_classes=len(bunch.target_names),
        preprocess="tabular",
        source=source,
    )


@register_dataset("digits")
def _load_digits() -> RawData:
    return _sklearn_classification("load_digits", "scikit-learn bundled digits (UCI optical digits, 8x8)")


@register_dataset("breast_cancer")
def _load_breast_cancer() -> RawData:
    return _sklearn_classification("load_breast_cancer", "scikit-learn bundled Wisconsin breast cancer")


@register_dataset("wine")
def _load_wine() -> RawData:
    return _sklearn_classification("load_wine", "scikit-learn bundled UCI wine")


@register_dataset("iris")
def _load_iris() -> RawData:
    return _sklearn_classification("load_iris", "scikit-learn bundled iris")


@register_dataset("diabetes")
def _load_diabetes() -> RawData:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    return RawData(
        kind="regression",
        x_train=np.asarray(bunch.data, dtype=np.float64),
        y_train=np.asarray(bunch.target, dtype=np.float64).reshape(-1, 1),
        num_classes=1,
        preprocess="tabular",
        source="scikit-learn bundled diabetes (Efron et al. 2004)",
    )


# --------------------------------------------------------------------------------------------------
# MNIST-1D (generated locally)
# --------------------------------------------------------------------------------------------------

# mnist1d's generator draws from the *global* numpy / random RNGs; we save and restore them around
# the call (under a lock, so two threads loading MNIST-1D cannot interleave).
_GLOBAL_RNG_LOCK = threading.Lock()


@register_dataset("mnist1d")
def _load_mnist1d(*, num_samples: int = 5000, data_seed: int = 42) -> RawData:
    _check_int("num_samples", num_samples)
    _check_int("data_seed", data_seed)
    if num_samples < 20:
        raise ValueError(f"option 'num_samples' of dataset 'mnist1d' must be >= 20, got {num_samples}")
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(data_seed)
    with _GLOBAL_RNG_LOCK:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            generated = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    return RawData(
        kind="classification",
        x_train=np.asarray(generated["x"], dtype=np.float64),
        y_train=np.asarray(generated["y"], dtype=np.int64),
        x_test=np.asarray(generated["x_test"], dtype=np.float64),
        y_test=np.asarray(generated["y_test"], dtype=np.int64),
        num_classes=10,
        preprocess="signal",
        source=f"mnist1d.make_dataset (package defaults, num_samples={num_samples}, seed={data_seed})",
    )


# --------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (official binary version: fixed-length records, no pickle)
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# SVHN (official cropped-digits .mat files)
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# California housing (StatLib archive as used by scikit-learn)
# --------------------------------------------------------------------------------------------------

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
