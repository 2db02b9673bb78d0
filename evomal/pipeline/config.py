"""Configuration: defaults from the JSON schema, validation with messages that name the key.

The schema (workflow/schemas/config.schema.yaml) is the single source of truth for keys, types, ranges
and defaults; this module adds what a schema cannot say (cross-key rules, registry names).
"""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from evomal.methods import get_method, list_methods
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


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _from_text(node: dict, value):
    """A number or boolean that arrived as text: Snakemake parses the values nested in ``--config
    'experiments={x: {search: {generations: 5}}}'`` with YAML's base loader, which gives only strings."""
    kinds = node.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if not isinstance(value, str) or "string" in kinds:
        return value
    text = value.strip()
    if "boolean" in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _NUMBER.fullmatch(text):
        if "integer" in kinds and re.fullmatch(r"[-+]?\d+", text):
            return int(text)
        if "number" in kinds:
            return float(text)
    return value


def _filling_validator(schema: dict):
    """A Draft 2020-12 validator that also inserts every missing property's default as it validates
    (jsonschema's documented ``validators.extend`` recipe), so that the schema alone holds the defaults.

    A default is inserted before the property is validated, so the defaults inside it are filled too
    (``search: {}`` gets every search key). ``$ref`` targets are looked up in ``schema``'s ``$defs``.
    """
    import jsonschema
    from jsonschema import validators

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    check_items = base.VALIDATORS["items"]

    def properties(validator, props, instance, node):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                sub = _resolve_ref(schema, sub)
                if key not in instance and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
                elif key in instance:
                    instance[key] = _from_text(sub, instance[key])
        yield from check_properties(validator, props, instance, node)

    def items(validator, sub, instance, node):
        if validator.is_type(instance, "array") and isinstance(sub, dict):
            instance[:] = [_from_text(_resolve_ref(schema, sub), v) for v in instance]
        yield from check_items(validator, sub, instance, node)

    return validators.extend(base, {"properties": properties, "items": items})(schema)


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _schema_errors(schema: dict, config: dict) -> list[str]:
    from jsonschema.exceptions import best_match

    messages = []  # iter_errors fills the defaults into ``config`` while it validates
    for err in sorted(_filling_validator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
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
    # the catalog, not the registries: they import torch, and the Snakefile runs this on every parse
    from evomal.tasks.catalog import dataset_names, model_names

    datasets, models = dataset_names(), model_names()
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


def _table_errors(experiments: dict) -> list[str]:
    """Tables named in the config (dataset ``table``): the loader's own checks, run now on the files.

    Only configs that name a table pay for it (reading the files, and importing torch with the registry).
    """
    errors = []
    for name, exp in experiments.items():
        targets = [("", exp)] + [(f".transfer.{i}", t) for i, t in enumerate(exp.get("transfer", []))]
        for where, target in targets:
            dname, options = component(target["dataset"])
            if dname == "table":
                from evomal.tasks.datasets.table import table_problems

                errors += [f"config key experiments.{name}{where}.dataset: {p}" for p in table_problems(options)]
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
        gp = exp["method"] in methods and "gp_search" in get_method(exp["method"]).stages  # breeding's keys
        if gp and s["tournament"] > s["population"]:
            errors.append(f"config key experiments.{name}.search.tournament: {s['tournament']} is larger than "
                          f"search.population ({s['population']}); a tournament draws from the population")
        lo, hi = s["init_height"]
        if lo > hi or hi + 1 > s["max_height"]:  # repair can add one level to an initial tree
            errors.append(f"config key experiments.{name}.search.init_height: need min <= max and "
                          f"max + 1 <= max_height ({s['max_height']}), got {s['init_height']}")
        shared = sorted(set(exp["selection"]["seeds"]) & set(exp["meta_test"]["seeds"]))
        if exp["selection"]["finalists"] and shared:
            errors.append(f"config key experiments.{name}.selection.seeds: must be disjoint from "
                          f"meta_test.seeds (the meta-test must see fresh seeds), shared: {shared}")
        if exp["method"] in methods:  # what the method itself needs (evomal.methods: Method.check)
            errors += [f"config key experiments.{name}.{p}" for p in get_method(exp["method"]).config_problems(exp)]
        for other in exp["compare"]:
            if other not in config["experiments"] or other == name:
                errors.append(f"config key experiments.{name}.compare: {other!r} is not another defined "
                              f"experiment; defined: {', '.join(config['experiments'])}")
    return errors + _path_errors(config)


def _path_errors(config: dict) -> list[str]:
    """Folders the run will create, below something that is not a folder (checked now: the first job
    would fail with a raw OSError)."""
    uri = config["tracking_uri"]
    paths = [("results_dir", Path(config["results_dir"]))]
    if uri.startswith("sqlite:///"):
        paths.append(("tracking_uri", Path(uri[len("sqlite:///"):].split("?")[0]).parent))
    errors = []
    for key, path in paths:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            errors.append(f"config key {key}: {path} cannot be created, {blocker} is a file, not a folder; "
                          f"choose another {key}")
    return errors


def resolve_config(config: dict, *, check_registries: bool = True) -> dict:
    """Return a validated copy of ``config`` with every default filled in; raise ConfigError otherwise."""
    schema = load_schema()
    resolved = copy.deepcopy(dict(config))
    errors = _schema_errors(schema, resolved)  # fills in the defaults
    if not errors:
        errors = _cross_key_errors(resolved)
        if check_registries:
            errors += _registry_errors(resolved["experiments"])
            errors = errors or _table_errors(resolved["experiments"])
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return resolved


def experiment(config: dict, name: str) -> dict[str, Any]:
    return config["experiments"][name]
