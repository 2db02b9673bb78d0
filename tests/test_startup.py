"""Start-up: parsing the workflow (every `snakemake` call, `-n` included) imports no heavy library.

`import torch` alone costs 1.5 s here, MLflow 1-2 s; the Snakefile is parsed by every `snakemake` call,
so its parse-time imports, the config validation and the DAG's input functions must stay free of them.
Asserted by what a fresh interpreter has in ``sys.modules`` (counts, not seconds).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workflow_utils import REPO, SNAKEFILE

#: must not be imported while the workflow is parsed and its DAG built
HEAVY = ("torch", "mlflow", "sympy", "matplotlib", "deap", "sklearn", "evomal.tasks.datasets",
         "evomal.tasks.models", "evomal.results")


def _fresh(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter; return the JSON it prints on its last line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_snakemake_dry_run_imports_no_heavy_library(tmp_path):
    """The real `snakemake -n` on the default config, run in-process in a fresh interpreter."""
    out = _fresh(f"""
        import json, sys
        sys.argv = ["snakemake", "-s", {str(SNAKEFILE)!r}, "--configfile", {str(REPO / "config" / "config.yaml")!r},
                    "--cores", "2", "-n", "-q"]
        from snakemake.cli import main
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        print(json.dumps({{"rc": code, "modules": sorted(sys.modules)}}))
    """, tmp_path)
    assert out["rc"] in (0, None)
    loaded = set(out["modules"])
    assert "evomal.pipeline.config" in loaded and "snakemake" in loaded  # the workflow was parsed
    assert sorted(h for h in HEAVY if h in loaded) == []


def test_config_validation_of_every_preset_imports_no_torch(tmp_path):
    """resolve_config checks dataset / model / method names without the registries' torch import."""
    presets = sorted(str(p) for p in (REPO / "config" / "experiments").glob("*.yaml"))
    presets.append(str(REPO / "config" / "config.yaml"))
    out = _fresh(f"""
        import copy, json, sys, yaml
        from evomal.pipeline.config import ConfigError, resolve_config
        for path in {presets!r}:
            resolve_config(yaml.safe_load(open(path)))
        bad = yaml.safe_load(open({presets[-1]!r}))
        exp = next(iter(bad["experiments"].values()))
        exp["dataset"], exp["model"] = "no_such_set", {{"name": "no_such_net"}}
        try:
            resolve_config(bad)
            message = ""
        except ConfigError as exc:
            message = str(exc)
        print(json.dumps({{"message": message, "modules": sorted(sys.modules)}}))
    """, tmp_path)
    loaded = set(out["modules"])
    assert sorted(h for h in HEAVY if h in loaded) == []
    # an unknown name still fails listing the known ones, from the catalog
    assert "unknown dataset 'no_such_set'; known: breast_cancer, california" in out["message"]
    assert "unknown model 'no_such_net'; known: allcnnc, cnn" in out["message"]


def test_catalog_names_exactly_what_the_decorators_register():
    """The torch-free name table and the @register_dataset / @register_model registries agree."""
    from evomal.tasks import catalog
    from evomal.tasks.datasets import registry as dataset_registry
    from evomal.tasks.models import registry as model_registry

    datasets = {name: e.loader for name, e in dataset_registry._DATASETS.items()}
    models = {name: e.builder for name, e in model_registry._MODELS.items()}
    assert catalog.dataset_names() == sorted(datasets)
    assert catalog.model_names() == sorted(models)
    for table, registered in ((catalog.DATASETS, datasets), (catalog.MODELS, models)):
        for name, target in table.items():
            assert catalog.resolve(target) is registered[name], f"{name}: catalog says {target}"


@pytest.mark.parametrize("kind", ["dataset", "model"])
def test_registry_lookup_of_an_unknown_name_lists_the_known_ones(kind):
    from evomal.tasks.datasets import dataset_options
    from evomal.tasks.models import model_options

    lookup, known = (dataset_options, "digits") if kind == "dataset" else (model_options, "mlp")
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; known {kind}s: .*{known}"):
        lookup("nope")
