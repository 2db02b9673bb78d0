"""Your own data by config (dataset ``table``): CSV, Parquet and NPZ files written here from real datasets
(scikit-learn's wine, breast cancer and diabetes), their splits and standardisation, the checks the config
runs before any job, and a search with a transfer through the real snakemake."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from evomal.pipeline.config import ConfigError, resolve_config
from evomal.tasks.datasets import load_task, read_table, table_problems
from workflow_utils import snakemake, tiny_config, write_config


def _wine_csv(path, *, labels=("barolo", "grignolino", "barbera")):
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    frame["cultivar"] = frame.pop("target").map(dict(enumerate(labels)))
    frame.to_csv(path, index=False)
    return frame


def _diabetes_frame():
    from sklearn.datasets import load_diabetes

    return load_diabetes(scaled=False, as_frame=True).frame  # as the bundled `diabetes` dataset loads it


def _same_task(a, b) -> None:
    for split in ("train", "val", "test"):
        for x, y in zip(a.split(split), b.split(split)):
            assert torch.equal(x, y), split


# --------------------------------------------------------------------------- loading
def test_a_csv_table_is_the_bundled_dataset_it_was_written_from(tmp_path):
    _wine_csv(tmp_path / "wine.csv", labels=("class_0", "class_1", "class_2"))  # sklearn's target names
    table = load_task("table", path=str(tmp_path / "wine.csv"), target="cultivar", kind="classification", seed=3)
    assert table.num_classes == 3 and table.input_shape == (13,)
    _same_task(table, load_task("wine", seed=3))  # same rows, splits and standardisation as the bundled set


def test_text_labels_become_classes_in_sorted_order(tmp_path):
    frame = _wine_csv(tmp_path / "wine.csv")
    task = load_task("table", path=str(tmp_path / "wine.csv"), target="cultivar", kind="classification")
    assert "classes barbera, barolo, grignolino" in task.info["source"]
    counts = frame["cultivar"].value_counts()
    seen = torch.cat([task.y_train, task.y_val, task.y_test]).bincount().tolist()
    assert seen == [counts["barbera"], counts["barolo"], counts["grignolino"]]


def test_standardised_with_training_split_statistics_only(tmp_path):
    raw = _wine_csv(tmp_path / "wine.csv")
    task = load_task("table", path=str(tmp_path / "wine.csv"), target="cultivar", kind="classification")
    x = raw.drop(columns="cultivar").to_numpy(float)
    train_rows = x[task.info["indices"]["train"]]  # row numbers of the file
    np.testing.assert_allclose(task.info["x_mean"], train_rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(task.info["x_std"], train_rows.std(0), rtol=1e-12)
    np.testing.assert_allclose(task.x_train.double().mean(0).numpy(), 0.0, atol=1e-5)
    # not all rows' statistics: the validation and test rows took no part in them
    assert not np.allclose(task.info["x_mean"], x.mean(0))


def test_parquet_regression_and_a_feature_subset(tmp_path):
    frame = _diabetes_frame()
    frame.to_parquet(tmp_path / "diabetes.parquet")
    table = load_task("table", path=str(tmp_path / "diabetes.parquet"), target="target", kind="regression")
    _same_task(table, load_task("diabetes"))  # same 60/20/20 split, same target standardisation
    few = load_task("table", path=str(tmp_path / "diabetes.parquet"), target="target", kind="regression",
                    features=["bmi", "bp"])
    assert few.input_shape == (2,) and few.kind == "regression" and few.y_train.shape[1] == 1


def test_npz_arrays_a_test_file_and_a_test_fraction(tmp_path):
    frame = _diabetes_frame()
    x, y = frame.drop(columns="target").to_numpy(), frame["target"].to_numpy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    task = load_task("table", path=str(tmp_path / "d.npz"), target="y", kind="regression")
    assert task.input_shape == (10,) and len(task.y_test) == round(0.2 * len(y))
    frame.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[300:].to_csv(tmp_path / "test.csv", index=False)
    split = load_task("table", path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv"),
                      target="target", kind="regression")
    assert len(split.y_test) == len(frame) - 300 and len(split.y_train) + len(split.y_val) == 300
    third = load_task("table", path=str(tmp_path / "train.csv"), target="target", kind="regression", test_fraction=0.3)
    assert len(third.y_test) == 90


# --------------------------------------------------------------------------- checks before any job
def _config(dataset, transfer_dataset=None) -> dict:
    config = tiny_config(dataset=dataset)
    if transfer_dataset is not None:
        config["experiments"]["tiny"]["transfer"] = [{"dataset": transfer_dataset, "model": "linear"}]
    return config


@pytest.mark.parametrize("change, message", [
    ({"path": "missing.csv"}, r"missing\.csv: no such file"),
    ({"target": "label"}, r"no target column 'label'; columns: alcohol, "),
    ({"features": ["alcohol", "colour"]}, r"no feature column\(s\) 'colour'"),
    ({"kind": "ranking"}, r"kind 'ranking' is not allowed; allowed values: classification, regression"),
    ({"kind": None}, r"needs the option\(s\) kind"),
    ({"target": "alcohol", "features": ["ash"]}, r"fewer than 5 rows; every class needs at least 5"),
    ({"target": "cultivar", "kind": "regression"}, r"must be numeric"),
    ({"sep": ";"}, r"unknown option\(s\) sep for dataset 'table'; allowed options: features, kind, path"),
    ({"test_fraction": 0.3, "test_path": "wine.csv"}, r"test_path or test_fraction, not both"),
])
def test_a_bad_table_is_refused_when_the_config_is_read(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the folder snakemake runs in
    _wine_csv(tmp_path / "wine.csv")
    dataset = {"name": "table", "path": "wine.csv", "target": "cultivar", "kind": "classification", **change}
    dataset = {k: v for k, v in dataset.items() if v is not None}
    assert resolve_config(_config({"name": "table", "path": "wine.csv", "target": "cultivar",
                                   "kind": "classification"}))  # the good table passes
    with pytest.raises(ConfigError, match=r"config key experiments\.tiny\.dataset: .*" + message):
        resolve_config(_config(dataset))
    # a transfer target is checked the same way, and named by its own key
    with pytest.raises(ConfigError, match=r"config key experiments\.tiny\.transfer\.0\.dataset: .*" + message):
        resolve_config(_config({"name": "digits"}, dataset))


def test_missing_values_and_text_features_are_named(tmp_path):
    frame = _wine_csv(tmp_path / "wine.csv")
    frame.loc[[3, 7], "ash"] = np.nan
    frame["colour_name"] = "red"
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    problems = table_problems({"path": str(tmp_path / "gaps.csv"), "target": "cultivar", "kind": "classification"})
    assert problems and "'colour_name' are not numeric" in problems[0]
    problems = table_problems({"path": str(tmp_path / "gaps.csv"), "target": "cultivar", "kind": "classification",
                               "features": ["ash", "hue"]})
    assert problems == [f"{tmp_path / 'gaps.csv'}: missing values in 'ash' (2); fill or drop those rows first"]
    assert list(read_table(tmp_path / "gaps.csv").columns)[-1] == "colour_name"


# --------------------------------------------------------------------------- through the real snakemake
@pytest.mark.slow
def test_search_and_transfer_on_csv_files_named_in_the_config(tmp_path):
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer(as_frame=True).frame
    cancer["diagnosis"] = cancer.pop("target").map({0: "malignant", 1: "benign"})
    cancer.to_csv(tmp_path / "cancer.csv", index=False)
    _wine_csv(tmp_path / "wine.csv")
    config = tiny_config(
        dataset={"name": "table", "path": "cancer.csv", "target": "diagnosis", "kind": "classification"},
        model={"name": "mlp", "hidden": [16]}, search={"population": 6, "generations": 1},
        training={"steps": 30}, meta_test={"steps": 40, "seeds": [0, 1], "eval_every": 20},
        transfer=[{"dataset": {"name": "table", "path": "wine.csv", "target": "cultivar", "kind": "classification"},
                   "model": "linear", "steps": 30}])
    write_config(tmp_path, config)
    proc = snakemake(tmp_path)
    exp = tmp_path / "results" / "tiny"
    meta = pd.read_csv(exp / "meta_test.tsv", sep="\t")
    transfer = pd.read_csv(exp / "transfer.tsv", sep="\t")
    assert set(meta["target"]) == {"cancer.csv/mlp"} and set(transfer["target"]) == {"wine.csv/linear"}
    assert {"baseline", "evomal"} <= set(meta["method"]) and set(meta["seed"]) == {0, 1}
    assert np.isfinite(meta["test_metric"]).all() and np.isfinite(transfer["test_metric"]).all()
    best = json.loads((exp / "best" / "loss.json").read_text())
    assert best["kind"] == "classification" and "sgd" in best
    assert "meta-test: cancer.csv/mlp " in proc.stderr and "transfer: wine.csv/linear " in proc.stderr
