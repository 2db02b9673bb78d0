"""Configuration: defaults from the JSON schema, validation with messages that name the key.

The schema (workflow/schemas/config.schema.yaml) is the single source of truth for keys, types, ranges
and defaults; this module adds what a schema cannot say (cross-key rules, registry names).
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from evomal.methods import list_methods
from evomal.tasks.spec import component

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """An invalid configuration, reported before any job runs."""


@lru_cache(maxsize=4)
def load_schema(path: str = str(SCHEMA_PATH)) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _resolve_ref(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node


def _fill_defaults(schema: dict, node: dict, value):
    """Recursively insert schema defaults into mappings (a missing key gets its default)."""
    node = _resolve_ref(schema, node)
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key, sub in props.items():
            sub_r = _resolve_ref(schema, sub)
            if key not in value and "default" in sub_r:
                value[key] = copy.deepcopy(sub_r["default"])
            if key in value:
                value[key] = _fill_defaults(schema, sub_r, value[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    value[key] = _fill_defaults(schema, extra, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [_fill_defaults(schema, node["items"], v) for v in value]
    return value


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _schema_errors(schema: dict, config: dict) -> list[str]:
    import jsonschema
    from jsonschema.exceptions import best_match

    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        # oneOf errors are opaque; report the most specific cause instead
        leaf = best_match(err.context) if err.context else err
        where = _key_path(leaf.absolute_path)
        what = leaf.message
        if leaf.validator == "enum":
            what = f"{leaf.instance!r} is not allowed; allowed values: {', '.join(map(str, leaf.validator_value))}"
        elif leaf.validator == "additionalProperties":
            allowed = sorted(_resolve_ref(schema, leaf.schema).get("properties", {}))
            what = f"{leaf.message}; allowed keys: {', '.join(allowed)}"
        messages.append(f"config key {where}: {what}")
    return messages


def _registry_errors(experiments: dict) -> list[str]:
    from evomal.tasks.datasets import list_datasets
    from evomal.tasks.models import list_models

    datasets, models = list_datasets(), list_models()
    errors = []
    for name, exp in experiments.items():
        targets = [("", exp)] + [(f".transfer.{i}", t) for i, t in enumerate(exp.get("transfer", []))]
        for where, target in targets:
            dname, _ = component(target["dataset"])
            mname, _ = component(target["model"])
            if dname not in datasets:
                errors.append(f"config key experiments.{name}{where}.dataset: unknown dataset {dname!r}; "
                              f"known: {', '.join(datasets)}")
            if mname not in models:
                errors.append(f"config key experiments.{name}{where}.model: unknown model {mname!r}; "
                              f"known: {', '.join(models)}")
    return errors


def _cross_key_errors(config: dict) -> list[str]:
    errors = []
    for name in config["run"]:
        if name not in config["experiments"]:
            errors.append(f"config key run: experiment {name!r} is not defined; defined: "
                          f"{', '.join(config['experiments'])}")
    methods = list_methods()
    for name, exp in config["experiments"].items():
        if exp["method"] not in methods:
            errors.append(f"config key experiments.{name}.method: unknown method {exp['method']!r}; "
                          f"known: {', '.join(methods)}")
        s = exp["search"]
        if s["crossover"] + s["mutation"] > 1:
            errors.append(f"config key experiments.{name}.search: crossover + mutation must be <= 1, "
                          f"got {s['crossover']} + {s['mutation']}")
        lo, hi = s["init_height"]
        if lo > hi or hi + 1 > s["max_height"]:  # repair can add one level to an initial tree
            errors.append(f"config key experiments.{name}.search.init_height: need min <= max and "
                          f"max + 1 <= max_height ({s['max_height']}), got {s['init_height']}")
        for other in exp["compare"]:
            if other not in config["experiments"] or other == name:
                errors.append(f"config key experiments.{name}.compare: {other!r} is not another defined "
                              f"experiment; defined: {', '.join(config['experiments'])}")
    return errors


def resolve_config(config: dict, *, check_registries: bool = True) -> dict:
    """Return a validated copy of ``config`` with every default filled in; raise ConfigError otherwise."""
    schema = load_schema()
    resolved = _fill_defaults(schema, schema, copy.deepcopy(dict(config)))
    errors = _schema_errors(schema, resolved)
    if not errors:
        errors = _cross_key_errors(resolved)
        if check_registries:
            errors += _registry_errors(resolved["experiments"])
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return resolved


def experiment(config: dict, name: str) -> dict[str, Any]:
    return config["experiments"][name]
