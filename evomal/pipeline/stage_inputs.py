"""What stage jobs read: population and archive files, and an experiment's device, task, network
factory and training settings."""
from __future__ import annotations

from evomal.core import files
from evomal.gp.operators import Individual, derive_rng
from evomal.learning.context import TrainingSettings, load_task_for, model_factory


def resolve(device_spec: str):
    from evomal.learning.devices import resolve_device

    return resolve_device(device_spec)


def learning_setup(exp: dict, device: str):
    """Device, task (memoised per process), seed -> network factory, and the base training settings."""
    dev = resolve(device)
    task = load_task_for(exp["dataset"], seed=exp["seed"], device=dev)
    return dev, task, model_factory(exp["model"], task, dev), TrainingSettings.from_config(exp["training"])


def candidate_seed(exp: dict, cand_id: str) -> int:
    return derive_rng(exp["seed"], "weights", cand_id).getrandbits(31)


def read_population(path) -> list[Individual]:
    doc = files.read_json(path)
    try:
        return [Individual.from_dict(d) for d in doc["individuals"]]
    except (KeyError, TypeError) as exc:
        raise files.ResultFileError(f"corrupted results file {path}: bad individual record ({exc})") from None


def read_archive(path) -> dict:
    if path is None:
        return {"entries": []}
    return files.read_json(path)
