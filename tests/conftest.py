"""Fixtures shared by the test modules."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/workflow_utils.py


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: extra threads only add contention on a shared machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def digits():
    from evomal.tasks.datasets import load_task

    return load_task("digits", seed=0)


@pytest.fixture(scope="session")
def diabetes():
    from evomal.tasks.datasets import load_task

    return load_task("diabetes", seed=0)
