"""MNIST-1D, generated locally with the PyPI package ``mnist1d`` (never downloaded), once per machine
(the arrays are cached on disk: :mod:`evomal.tasks.datasets.generated`)."""

from __future__ import annotations

import random
import threading

import numpy as np

from evomal.tasks.datasets.registry import RawData, _check_int, register_dataset

# mnist1d's generator draws from the *global* numpy / random RNGs; we save and restore them around
# the call (under a lock, so two threads loading MNIST-1D cannot interleave).
_GLOBAL_RNG_LOCK = threading.Lock()


def _generate(num_samples: int, data_seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    with _GLOBAL_RNG_LOCK:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            generated = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    return {k: np.asarray(generated[k]) for k in ("x", "y", "x_test", "y_test")}


@register_dataset("mnist1d")
def _load_mnist1d(*, num_samples: int = 5000, data_seed: int = 42) -> RawData:
    _check_int("num_samples", num_samples)
    _check_int("data_seed", data_seed)
    if num_samples < 20:
        raise ValueError(f"option 'num_samples' of dataset 'mnist1d' must be >= 20, got {num_samples}")
    from evomal.tasks.datasets.generated import generated_arrays

    arguments = {"num_samples": int(num_samples), "data_seed": int(data_seed)}
    generated = generated_arrays("mnist1d", arguments, lambda: _generate(**arguments), packages=("mnist1d",))
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
