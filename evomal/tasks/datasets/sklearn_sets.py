"""scikit-learn's bundled sets (offline): digits, breast_cancer, wine, iris, diabetes."""

from __future__ import annotations

import numpy as np

from evomal.tasks.datasets.registry import RawData, register_dataset


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
