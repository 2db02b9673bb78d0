"""How a config names a dataset or a model: a registry name, or ``{name: ..., **options}``."""
from __future__ import annotations


def component(spec) -> tuple[str, dict]:
    """(registry name, options) of a dataset/model entry of the config."""
    if isinstance(spec, str):
        return spec, {}
    spec = dict(spec)
    return spec.pop("name"), spec


def component_name(spec) -> str:
    return component(spec)[0]
