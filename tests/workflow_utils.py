"""Running the real Snakemake on tiny configs, for the end-to-end tests."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

#: A search that exercises every stage in seconds: real digits data, a real MLP, the real scheduler.
TINY_CONFIG = {
    "run": ["tiny"],
    "results_dir": "results",
    "tracking_uri": "sqlite:///results/mlflow.db",
    "device": "cpu",
    "shards": 2,
    "experiments": {
        "tiny": {
            "method": "evomal",
            "seed": 0,
            "dataset": {"name": "digits", "train_size": 300},
            "model": {"name": "mlp", "hidden": [32]},
            "search": {"population": 8, "generations": 2},
            "local_search": {"meta_steps": 5},
            "training": {"steps": 40, "lr": 0.05, "momentum": 0.9, "batch_size": 64},
            "filters": {"rejection_steps": 30, "rejection_samples": 50},
            "meta_test": {"steps": 60, "seeds": [0, 1], "eval_every": 20},
            "transfer": [{"dataset": "wine", "model": "linear", "steps": 40}],
        }
    },
}


def tiny_config(**experiment_overrides) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    for key, value in experiment_overrides.items():
        exp = config["experiments"]["tiny"]
        if isinstance(value, dict) and isinstance(exp.get(key), dict):
            exp[key].update(value)
        else:
            exp[key] = value
    return config


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: float = 900,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run ``snakemake`` in ``workdir`` with its config.yaml; the workflow's default profile applies."""
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", "config.yaml", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def dry_run_jobs(log: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """rule -> (wildcards, priority) of each job block of a dry run with `--quiet host` (no priority line
    means 0)."""
    jobs: dict[str, list[tuple[dict[str, str], float]]] = {}
    for block in re.split(r"\n(?:local)?(?:rule|checkpoint) ", log)[1:]:
        head = block.split("\n\n")[0]
        wildcards = re.search(r"\n\s+wildcards: ([^\n]+)", head)
        priority = re.search(r"\n\s+priority: (\S+)", head)
        jobs.setdefault(block.split(":", 1)[0], []).append(
            (dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {},
             float(priority.group(1)) if priority else 0.0))
    return jobs


def contract_files(exp_dir: Path) -> dict[str, bytes]:
    """Files that must be identical whenever a run is recomputed (timings live elsewhere)."""
    names = ["population.json", "filter.json", "fitness.tsv", "archive.json"]
    out = {}
    for gen in sorted(exp_dir.glob("gen_*")):
        for name in names:
            out[f"{gen.name}/{name}"] = (gen / name).read_bytes()
        for cand in sorted((gen / "candidates").glob("*")):
            out[f"{gen.name}/candidates/{cand.name}/loss.json"] = (cand / "loss.json").read_bytes()
    for path in sorted((exp_dir / "test_runs").glob("*.json")):
        out[f"test_runs/{path.name}"] = path.read_bytes()
    for name in ["finalists.tsv", "best/loss.json", "meta_test.tsv", "meta_test_summary.tsv", "transfer.tsv"]:
        if (exp_dir / name).exists():
            out[name] = (exp_dir / name).read_bytes()
    return out


def candidate_fitness(exp_dir: Path) -> dict[str, float]:
    import json

    return {f"{p.parent.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())["fitness"]
            for p in exp_dir.glob("gen_*/candidates/*/fitness.json")}
