"""The dataset registry and ``load_task``: registered loaders give raw arrays, ``load_task`` turns
them into a :class:`Task` with seeded train / validation / test splits on the requested device.

Split and preprocessing rules (DESIGN section 1.7) are described in docs/datasets.md; the helpers
that implement them live in :mod:`evomal.tasks.datasets.splits`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from evomal.tasks.datasets.splits import (
    _STREAM_SUBSET,
    _STREAM_TEST,
    _STREAM_VAL,
    _check_finite,
    _class_labels,
    _normalise_inputs,
    _rng,
    _stratified_take,
)

__all__ = ["Task", "RawData", "load_task", "list_datasets", "register_dataset", "dataset_options"]

VALIDATION_FRACTION = 0.1  # of the (official or derived) training set, classification
TEST_FRACTION = 0.2  # classification sets without an official test split
REGRESSION_FRACTIONS = (0.6, 0.2, 0.2)  # train / validation / test

# Options every dataset accepts (handled by load_task itself).
COMMON_OPTIONS = ("split_seed", "validation_fraction")


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
    #: share of the rows that becomes the test split when there is no official one (None: the defaults)
    test_fraction: float | None = None


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
    validation_fraction = options.pop("validation_fraction", VALIDATION_FRACTION)
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) \
            or not 0 < validation_fraction < 1:
        raise ValueError(f"option 'validation_fraction' of dataset {name!r} must be a number in (0, 1), "
                         f"got {validation_fraction!r}")
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

    if raw.kind != "classification" and validation_fraction != VALIDATION_FRACTION:
        raise ValueError(f"option 'validation_fraction' of dataset {name!r}: regression sets split "
                         "60/20/20 (train/validation/test); the option applies to classification sets")
    return _make_task(name, raw, split_seed=split_seed, train_size=train_size, device=device,
                      validation_fraction=float(validation_fraction))


def _check_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")


def _make_task(
    name: str, raw: RawData, *, split_seed: int, train_size: int | None, device: str | torch.device,
    validation_fraction: float = VALIDATION_FRACTION,
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
            fraction = TEST_FRACTION if raw.test_fraction is None else raw.test_fraction
            n_test = int(round(fraction * len(y_pool)))
            rest, test_idx = _stratified_take(y_pool, n_test, _rng(split_seed, _STREAM_TEST))
            x_test, y_test = x_pool[test_idx], y_pool[test_idx]
            x_pool, y_pool = x_pool[rest], y_pool[rest]
            pool_idx = rest
        else:
            x_test = np.asarray(raw.x_test)
            y_test = _class_labels(name, "test", np.asarray(raw.y_test), raw.num_classes)
            test_idx = np.arange(len(y_test))
            pool_idx = np.arange(len(y_pool))
        n_val = int(round(validation_fraction * len(y_pool)))
        train_rel, val_rel = _stratified_take(y_pool, n_val, _rng(split_seed, _STREAM_VAL))
    else:
        y_pool = y_pool.reshape(len(y_pool), -1)
        if y_pool.shape[1] != 1:
            raise ValueError(f"dataset {name!r}: regression targets must be one column")
        n = len(y_pool)
        perm = _rng(split_seed, _STREAM_TEST).permutation(n)
        if raw.x_test is not None:  # an official test set: the pool splits train:val as 60:20
            x_test, y_test = np.asarray(raw.x_test), np.asarray(raw.y_test, dtype=np.float64).reshape(-1, 1)
            test_idx = np.arange(len(y_test))
            rest = pool_idx = np.arange(n)
            val_rel = np.sort(perm[: int(round(REGRESSION_FRACTIONS[1] / sum(REGRESSION_FRACTIONS[:2]) * n))])
        else:
            fraction = REGRESSION_FRACTIONS[2] if raw.test_fraction is None else raw.test_fraction
            n_test = int(round(fraction * n))
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
