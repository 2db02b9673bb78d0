"""The disk cache of generated datasets (MNIST-1D): exact, keyed by what the values depend on, self-repairing."""
from __future__ import annotations

import numpy as np
import pytest

from evomal.tasks.datasets import generated
from evomal.tasks.datasets.generated import cache_path, generated_arrays


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMAL_DATA_DIR", str(tmp_path / "root"))
    return tmp_path / "root" / "generated"


def _counting(arrays):
    calls = []

    def generate():
        calls.append(1)
        return arrays

    return generate, calls


def test_second_call_reads_the_file_and_returns_the_same_arrays(cache_root):
    arrays = {"x": np.random.default_rng(0).normal(size=(7, 3)), "y": np.arange(7, dtype=np.int64)}
    generate, calls = _counting(arrays)
    first = generated_arrays("toy", {"n": 7}, generate)
    second = generated_arrays("toy", {"n": 7}, generate)
    assert len(calls) == 1
    assert cache_path("toy", {"n": 7}).parent == cache_root and cache_path("toy", {"n": 7}).exists()
    for k, v in arrays.items():
        assert second[k].dtype == v.dtype and np.array_equal(second[k], v) and np.array_equal(first[k], v)


def test_the_key_holds_the_arguments_and_the_versions(cache_root, monkeypatch):
    base = cache_path("toy", {"n": 7}, packages=("numpy",))
    assert cache_path("toy", {"n": 8}, packages=("numpy",)) != base
    assert cache_path("other", {"n": 7}, packages=("numpy",)) != base
    real = generated._versions
    monkeypatch.setattr(generated, "_versions", lambda names: {**real(names), "numpy": "0.0-other"})
    assert cache_path("toy", {"n": 7}, packages=("numpy",)) != base  # a new numpy: a new file


def test_a_damaged_file_is_regenerated_and_replaced(cache_root):
    arrays = {"x": np.ones((4, 2))}
    path = cache_path("toy", {"n": 4})
    path.parent.mkdir(parents=True)
    for damage in (b"not an npz", b"PK\x03\x04 truncated zip"):
        path.write_bytes(damage)
        generate, calls = _counting(arrays)
        out = generated_arrays("toy", {"n": 4}, generate)
        assert calls == [1] and np.array_equal(out["x"], arrays["x"])
        with np.load(path) as stored:
            assert np.array_equal(stored["x"], arrays["x"])


def test_an_unwritable_cache_warns_and_still_returns_the_arrays(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("EVOMAL_DATA_DIR", str(blocker))
    with pytest.warns(UserWarning, match="cannot cache the generated toy arrays"):
        out = generated_arrays("toy", {"n": 1}, lambda: {"x": np.zeros(1)})
    assert np.array_equal(out["x"], np.zeros(1))


def test_mnist1d_from_the_cache_equals_a_fresh_generation(cache_root):
    from evomal.tasks.datasets.mnist1d_set import _generate, _load_mnist1d

    fresh = _generate(200, 3)
    first = _load_mnist1d(num_samples=200, data_seed=3)  # generates and writes the file
    assert len(list(cache_root.glob("mnist1d-*.npz"))) == 1
    again = _load_mnist1d(num_samples=200, data_seed=3)  # reads it
    for raw in (first, again):
        assert np.array_equal(raw.x_train, fresh["x"]) and np.array_equal(raw.y_train, fresh["y"])
        assert np.array_equal(raw.x_test, fresh["x_test"]) and np.array_equal(raw.y_test, fresh["y_test"])
    other = _load_mnist1d(num_samples=200, data_seed=4)
    assert not np.array_equal(other.x_train, first.x_train)
    assert len(list(cache_root.glob("mnist1d-*.npz"))) == 2
