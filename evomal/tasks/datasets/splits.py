"""Seeded splitting, stratification, finite checks and normalisation of a dataset's arrays.

Pure numpy helpers used by ``load_task``; all randomness comes from ``numpy.random.Generator``
streams derived from the split seed (the global RNGs are never touched).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _rng(seed: int, stream: int) -> np.random.Generator:
    # Independent streams for the different random choices of one seed.
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), stream]))


_STREAM_TEST, _STREAM_VAL, _STREAM_SUBSET = 1, 2, 3


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
