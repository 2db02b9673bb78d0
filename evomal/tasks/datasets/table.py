"""Your own data as a dataset, named in the config: a CSV, Parquet or NPZ table with a target column.

    dataset: {name: table, path: data.csv, target: label, kind: classification}

Options: ``path`` (relative to the folder Snakemake runs in), ``target`` (the column to predict),
``kind`` (``classification`` or ``regression``), ``features`` (columns used as inputs; default every
other column), ``test_path`` (a second file that is the test split) or ``test_fraction`` (share of
the rows drawn as the test split; default 0.2). Splits and the standardisation with training-split
statistics are ``load_task``'s, as for the bundled tabular sets (docs/datasets.md).

:func:`table_problems` runs every check of the loader and returns its messages, so the config is
refused before any job starts when a file, a column or a class is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evomal.tasks.datasets.registry import REGRESSION_FRACTIONS, RawData, register_dataset

__all__ = ["TableSpec", "read_table", "table_problems", "TABLE_SUFFIXES", "MIN_ROWS_PER_CLASS", "MIN_ROWS"]

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".npz")
KINDS = ("classification", "regression")
#: every class needs this many rows of the training file, so that the stratified test and
#: validation splits can take some and training still sees it
MIN_ROWS_PER_CLASS = 5
#: rows of a regression table (each of the 60/20/20 splits must hold a few)
MIN_ROWS = 10


class TableError(ValueError):
    """A table that cannot be used as a dataset; the message names the file and the option."""


@dataclass(frozen=True)
class TableSpec:
    """The options of a ``table`` dataset, checked."""

    path: Path
    target: str
    kind: str
    features: tuple[str, ...] | None = None
    test_path: Path | None = None
    test_fraction: float | None = None

    @classmethod
    def from_options(cls, *, path=None, target=None, kind=None, features=None, test_path=None,
                     test_fraction=None) -> "TableSpec":
        missing = [name for name, value in (("path", path), ("target", target), ("kind", kind)) if value is None]
        if missing:
            raise TableError(f"dataset 'table' needs the option(s) {', '.join(missing)}, e.g. "
                             "{name: table, path: data.csv, target: label, kind: classification}")
        if kind not in KINDS:
            raise TableError(f"dataset 'table': kind {kind!r} is not allowed; allowed values: {', '.join(KINDS)}")
        if not isinstance(target, str):
            raise TableError(f"dataset 'table': target must be a column name, got {target!r}")
        if features is not None:
            if isinstance(features, str) or not all(isinstance(f, str) for f in features) or not features:
                raise TableError(f"dataset 'table': features must be a non-empty list of column names, got {features!r}")
            if target in features:
                raise TableError(f"dataset 'table': the target column {target!r} cannot also be a feature")
        if test_path is not None and test_fraction is not None:
            raise TableError("dataset 'table': give test_path or test_fraction, not both")
        if test_fraction is not None:
            ok = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
            upper = 1.0 - REGRESSION_FRACTIONS[1] if kind == "regression" else 1.0
            if not ok or not 0.0 < float(test_fraction) < upper:
                raise TableError(f"dataset 'table': test_fraction must be a number in (0, {upper:g}), "
                                 f"got {test_fraction!r}")
        return cls(Path(path), target, kind, None if features is None else tuple(features),
                   None if test_path is None else Path(test_path),
                   None if test_fraction is None else float(test_fraction))


# --------------------------------------------------------------------------- reading
def read_table(path: str | Path):
    """A CSV, Parquet or NPZ file as a pandas DataFrame (NPZ: one 1-D array per column; a 2-D
    array ``x`` of shape (N, k) becomes the columns ``x_0`` .. ``x_{k-1}``)."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise TableError(f"{path}: unknown table format {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise TableError(f"{path}: no such file (a relative path is relative to {Path.cwd()})")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        columns: dict[str, Any] = {}
        with np.load(path, allow_pickle=False) as npz:  # no pickle: a data file must never run code
            for key in npz.files:
                array = npz[key]
                if array.ndim == 1:
                    columns[key] = array
                elif array.ndim == 2:
                    columns.update({f"{key}_{i}": array[:, i] for i in range(array.shape[1])})
                else:
                    raise TableError(f"{path}: array {key!r} has shape {array.shape}; a table holds 1-D "
                                     "columns or 2-D (rows, columns) arrays")
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise TableError(f"{path}: the arrays have different lengths {lengths}")
        return pd.DataFrame(columns)
    except TableError:
        raise
    except Exception as exc:  # pandas, pyarrow and numpy raise many types for damaged files
        raise TableError(f"{path}: cannot be read as a table ({type(exc).__name__}: {exc})") from None


def _columns(frame, spec: TableSpec, path: Path) -> tuple[list[str], Any]:
    """(feature columns, target column) of one file, checked: present, numeric, no missing values."""
    import pandas as pd

    names = [str(c) for c in frame.columns]
    frame.columns = names
    if spec.target not in names:
        raise TableError(f"{path}: no target column {spec.target!r}; columns: {', '.join(names)}")
    features = list(spec.features) if spec.features is not None else [c for c in names if c != spec.target]
    unknown = [c for c in features if c not in names]
    if unknown:
        raise TableError(f"{path}: no feature column(s) {', '.join(map(repr, unknown))}; columns: {', '.join(names)}")
    if not features:
        raise TableError(f"{path}: no feature column besides the target {spec.target!r}")
    text = [c for c in features if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    if text:
        raise TableError(f"{path}: feature column(s) {', '.join(map(repr, text))} are not numeric; encode them "
                         "as numbers or leave them out with the option features")
    used = frame[features + [spec.target]]
    gaps = {c: int(n) for c, n in used.isna().sum().items() if n}
    if gaps:
        raise TableError(f"{path}: missing values in {', '.join(f'{c!r} ({n})' for c, n in gaps.items())}; "
                         "fill or drop those rows first")
    if spec.kind == "regression" and not pd.api.types.is_numeric_dtype(frame[spec.target]):
        raise TableError(f"{path}: the target {spec.target!r} of a regression table must be numeric")
    return features, frame[spec.target]


def _load(spec: TableSpec) -> RawData:
    train = read_table(spec.path)
    features, y_train = _columns(train, spec, spec.path)
    x_train = train[features].to_numpy(dtype=np.float64)
    x_test = y_test = None
    if spec.test_path is not None:
        test = read_table(spec.test_path)
        missing = [c for c in features + [spec.target] if c not in [str(c) for c in test.columns]]
        if missing:
            raise TableError(f"{spec.test_path}: the test file lacks the column(s) {', '.join(map(repr, missing))} "
                             f"of {spec.path}")
        _, y_test = _columns(test, TableSpec(spec.test_path, spec.target, spec.kind, tuple(features)), spec.test_path)
        x_test = test[features].to_numpy(dtype=np.float64)
    source = f"table {spec.path} (target {spec.target!r}, {len(features)} features)"
    if spec.kind == "regression":
        if len(y_train) < MIN_ROWS:
            raise TableError(f"{spec.path}: {len(y_train)} rows; a regression table needs at least {MIN_ROWS}")
        return RawData(kind="regression", x_train=x_train, y_train=y_train.to_numpy(np.float64).reshape(-1, 1),
                       num_classes=1, preprocess="tabular", source=source, x_test=x_test,
                       y_test=None if y_test is None else y_test.to_numpy(np.float64).reshape(-1, 1),
                       test_fraction=spec.test_fraction)
    return _classification(spec, x_train, y_train, x_test, y_test, source)


def _classification(spec: TableSpec, x_train, y_train, x_test, y_test, source: str) -> RawData:
    """Labels of any type become class indices in sorted order of the training file's labels."""
    classes, y_idx, counts = np.unique(y_train.to_numpy(), return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise TableError(f"{spec.path}: the target {spec.target!r} has a single class {classes.tolist()}; "
                         "classification needs at least two")
    few = {str(c): int(n) for c, n in zip(classes, counts) if n < MIN_ROWS_PER_CLASS}
    if few:
        shown = ", ".join(f"{c!r} ({n})" for c, n in list(few.items())[:10])
        raise TableError(f"{spec.path}: class(es) {shown} of {spec.target!r} have fewer than {MIN_ROWS_PER_CLASS} "
                         f"rows; every class needs at least {MIN_ROWS_PER_CLASS} (for a regression target set "
                         "kind: regression)")
    test_idx = None
    if y_test is not None:
        values = y_test.to_numpy()
        unseen = sorted({str(v) for v in values} - {str(c) for c in classes})
        if unseen:
            raise TableError(f"{spec.test_path}: label(s) {', '.join(unseen[:10])} do not occur in {spec.path}")
        lookup = {str(c): i for i, c in enumerate(classes)}
        test_idx = np.array([lookup[str(v)] for v in values], dtype=np.int64)
    shown = ", ".join(map(str, classes[:10].tolist())) + (", ..." if len(classes) > 10 else "")
    return RawData(kind="classification", x_train=x_train, y_train=y_idx.astype(np.int64).reshape(-1),
                   num_classes=len(classes), preprocess="tabular", source=f"{source}; classes {shown}",
                   x_test=x_test, y_test=test_idx, test_fraction=spec.test_fraction)


@register_dataset("table")
def _load_table(*, path: str | None = None, target: str | None = None, kind: str | None = None,
                features: list[str] | None = None, test_path: str | None = None,
                test_fraction: float | None = None) -> RawData:
    spec = TableSpec.from_options(path=path, target=target, kind=kind, features=features, test_path=test_path,
                                  test_fraction=test_fraction)
    return _load(spec)


def table_problems(options: dict) -> list[str]:
    """Every reason the ``table`` dataset with ``options`` cannot be loaded (empty when it can).

    Reads the files: the config check runs the loader's own checks before any job starts.
    """
    from evomal.tasks.datasets.registry import dataset_options

    allowed = dataset_options("table")
    unknown = sorted(set(options) - set(allowed) - {"train_size"})
    if unknown:
        return [f"unknown option(s) {', '.join(unknown)} for dataset 'table'; allowed options: "
                f"{', '.join(sorted([*allowed, 'train_size']))}"]
    try:
        _load(TableSpec.from_options(**{k: v for k, v in options.items() if k in allowed and k != "split_seed"}))
    except TableError as exc:
        return [str(exc)]
    return []
