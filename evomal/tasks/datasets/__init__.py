"""Datasets: a registry of loaders (``registry``), one module per source family, and ``load_task``.

Importing this package imports every family module, which registers its datasets
(``register_dataset``, like timm's model registry). ``load_task(name, seed=..., device=...)``
returns a :class:`Task` with seeded train / validation / test splits already on ``device``.
"""

from __future__ import annotations

from evomal.tasks.datasets import california, cifar, idx, mnist1d_set, sklearn_sets, svhn, table  # noqa: F401  (registration)
from evomal.tasks.datasets.california import CALIFORNIA_FEATURES, read_california
from evomal.tasks.datasets.cifar import read_cifar
from evomal.tasks.datasets.idx import FASHION_MNIST_SYSTEM_DIR, read_idx
from evomal.tasks.datasets.registry import (
    RawData,
    Task,
    dataset_options,
    list_datasets,
    load_task,
    register_dataset,
)
from evomal.tasks.datasets.svhn import read_svhn_mat
from evomal.tasks.datasets.table import read_table, table_problems

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
    "CALIFORNIA_FEATURES",
    "FASHION_MNIST_SYSTEM_DIR",
    "read_table",
    "table_problems",
]
