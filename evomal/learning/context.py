"""What a stage needs from an experiment's config: the task, a model factory, the device, seeds.

Loading a task is memoised per process: when Snakemake runs jobs in threads of one process
(``--force-use-threads``), every stage of every generation shares one copy of the data.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

from evomal.tasks.spec import component

_TASK_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _load_task_cached(name: str, options_json: str, seed: int, device: str):
    from evomal.tasks.datasets import load_task

    return load_task(name, seed=seed, device=device, **json.loads(options_json))


def load_task_for(dataset_spec, *, seed: int, device: torch.device):
    name, options = component(dataset_spec)
    with _TASK_LOCK:  # one load per dataset even when two threads ask at once
        return _load_task_cached(name, json.dumps(options, sort_keys=True), seed, str(device))


def model_factory(model_spec, task, device: torch.device) -> Callable[[int], torch.nn.Module]:
    """seed -> freshly initialised network for ``task``."""
    from evomal.tasks.models import build_model

    name, options = component(model_spec)

    def build(seed: int) -> torch.nn.Module:
        return build_model(name, task.input_shape, task.num_outputs, seed=seed, device=device, **options)

    return build


def use_threads(n: int) -> None:
    """Give torch the job's ``threads``.

    Snakemake already runs one job per core; when jobs are threads of one process they share torch's
    intra-op pool, and an oversubscribed pool made training many times slower here.
    """
    if n >= 1 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class TrainingSettings:
    steps: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    batch_size: int

    @classmethod
    def from_config(cls, training: dict) -> "TrainingSettings":
        return cls(**{k: training[k] for k in cls.__dataclass_fields__})

    def optimizer_kwargs(self) -> dict:
        return dict(lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                    weight_decay=self.weight_decay, batch_size=self.batch_size)
