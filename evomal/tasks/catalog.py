"""Names of the built-in datasets and models, listed without importing torch.

The Snakefile validates the config against the registries when it is parsed, for every ``snakemake``
call (``-n`` included); importing the registries themselves costs ``import torch`` (1.5 s here). This
table says which loader or builder a name stands for as ``"module:function"``; the
``@register_dataset`` / ``@register_model`` decorators stay the source of truth at run time, and
tests/test_startup.py checks that this table names exactly what they register.
"""
from __future__ import annotations

import importlib

#: dataset name -> "module:loader" (each registered with @register_dataset in that module)
DATASETS: dict[str, str] = {
    "breast_cancer": "evomal.tasks.datasets.sklearn_sets:_load_breast_cancer",
    "california": "evomal.tasks.datasets.california:_load_california",
    "cifar10": "evomal.tasks.datasets.cifar:_load_cifar10",
    "cifar100": "evomal.tasks.datasets.cifar:_load_cifar100",
    "diabetes": "evomal.tasks.datasets.sklearn_sets:_load_diabetes",
    "digits": "evomal.tasks.datasets.sklearn_sets:_load_digits",
    "fashion_mnist": "evomal.tasks.datasets.idx:_load_fashion_mnist",
    "iris": "evomal.tasks.datasets.sklearn_sets:_load_iris",
    "mnist": "evomal.tasks.datasets.idx:_load_mnist",
    "mnist1d": "evomal.tasks.datasets.mnist1d_set:_load_mnist1d",
    "svhn": "evomal.tasks.datasets.svhn:_load_svhn",
    "table": "evomal.tasks.datasets.table:_load_table",
    "wine": "evomal.tasks.datasets.sklearn_sets:_load_wine",
}

#: model name -> "module:builder" (each registered with @register_model in that module)
MODELS: dict[str, str] = {
    "allcnnc": "evomal.tasks.models.cifar:_allcnnc",
    "cnn": "evomal.tasks.models.small:_cnn",
    "lenet5": "evomal.tasks.models.small:_lenet5",
    "linear": "evomal.tasks.models.small:_linear",
    "mlp": "evomal.tasks.models.small:_mlp",
    "resnet18": "evomal.tasks.models.cifar:_resnet18",
    "vgg16": "evomal.tasks.models.cifar:_vgg16",
    "wideresnet": "evomal.tasks.models.cifar:_wideresnet",
}


def dataset_names() -> list[str]:
    """Built-in dataset names, sorted (no torch import)."""
    return sorted(DATASETS)


def model_names() -> list[str]:
    """Built-in model names, sorted (no torch import)."""
    return sorted(MODELS)


def resolve(target: str):
    """The function a ``"module:function"`` entry names (imports its module, and so torch)."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)
