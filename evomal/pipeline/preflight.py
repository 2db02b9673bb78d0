"""What a run checks and takes before its first job (Snakemake's ``onstart``), and gives back at its end.

:func:`start_run` records the run's own Snakemake lock files, claims the experiments its jobs write
(evomal.pipeline.locks), refuses a configuration that would overwrite the results of another one under
the same experiment name, or recompute the final stages of an extended search from fewer generations
(:func:`config_conflicts`), refuses a CUDA device the machine lacks when jobs run here, and removes the
temporary files that killed writers left in the experiments it now holds. A refusal is one line naming
the file or key, what is wrong and the command that resolves it; no job has started, so nothing (no
MLflow run either) is left behind. Nothing here imports torch unless the config asks for CUDA.
"""
from __future__ import annotations

import sys
from pathlib import Path

from evomal.core.files import remove_orphans
from evomal.pipeline.contract import CONFIG_FILE
from evomal.pipeline.locks import ClaimError, Held, claim_experiments, record_lock_owner

#: experiment keys whose change leaves the search's files valid (only later stages run again)
LATER_STAGE_KEYS = ("meta_test", "transfer", "compare", "selection", "analysis")
#: run-wide keys that write_experiment_config records beside the experiment's own
RUN_KEYS = ("experiment", "device", "shards", "tracking_uri")


class Refused(RuntimeError):
    """A run that must not start; the message says why and what to do."""


def recorded_experiment(exp_dir: Path, name: str) -> dict | None:
    """The experiment config recorded in ``<exp_dir>/config.yaml``, with today's defaults filled in (keys
    added since it was written take their defaults, as the rules' params do); None if absent or unusable."""
    import yaml

    from evomal.pipeline.config import ConfigError, resolve_config

    try:
        doc = yaml.safe_load((exp_dir / CONFIG_FILE).read_text())
        exp = {k: v for k, v in doc.items() if k not in RUN_KEYS}
        return resolve_config({"run": [name], "experiments": {name: exp}}, check_registries=False)["experiments"][name]
    except (OSError, yaml.YAMLError, AttributeError, ConfigError):
        return None


def _differences(recorded, current, path: str = "") -> list[str]:
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for key in [*recorded, *(k for k in current if k not in recorded)]:
            out += _differences(recorded.get(key), current.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if recorded == current else [f"{path}: {recorded!r} there, {current!r} in this config"]


def _generations(exp_dir: Path) -> list[int]:
    return sorted(int(p.name[4:]) for p in exp_dir.glob("gen_*") if p.name[4:].isdigit() and p.is_dir())


def config_conflicts(cfg: dict, names) -> list[str]:
    """Experiments whose results folder holds another configuration's results (any key that the search
    depends on), or more generations than this config asks for; one message each."""
    problems = []
    for name in names:
        exp_dir = Path(cfg["results_dir"]) / name
        recorded = recorded_experiment(exp_dir, name)
        if recorded is None:
            continue
        current = cfg["experiments"][name]
        search_keys = [k for k in current if k not in LATER_STAGE_KEYS]
        diffs = _differences({k: recorded.get(k) for k in search_keys}, {k: current[k] for k in search_keys})
        diffs = [d for d in diffs if not d.startswith("search.generations:")]
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
            problems.append(
                f"{exp_dir} holds the results of another configuration of experiment {name} ({shown}; recorded "
                f"in {exp_dir / CONFIG_FILE}): this run would recompute and overwrite them. To keep them, give "
                f"this configuration another experiment name or results_dir; to replace them, move them away "
                f"first: mv {exp_dir} {exp_dir}.old")
            continue
        wanted, had = current["search"]["generations"], recorded["search"]["generations"]
        later = [g for g in _generations(exp_dir) if g >= wanted]
        if later and had > wanted:
            folders = " ".join(str(exp_dir / f"gen_{g}") for g in later)
            problems.append(
                f"{exp_dir} holds {max(later) + 1} generations (search.generations: {had} in "
                f"{exp_dir / CONFIG_FILE}) but this config asks for {wanted}: the best loss, meta-test and "
                f"report would be recomputed from the first {wanted} only. To keep them all, run with "
                f"snakemake --config 'experiments={{{name}: {{search: {{generations: {had}}}}}}}' (or set "
                f"search.generations: {had} in your config); to go back to {wanted}, remove the later "
                f"generations first: rm -r {folders}")
    return problems


def refuse_conflicts(cfg: dict, names) -> None:
    """At parse time (dry runs too): ConfigError for the experiments a config runs and compares with."""
    from evomal.pipeline.config import ConfigError

    names = list(names) + [o for n in names for o in cfg["experiments"][n]["compare"] if o not in names]
    problems = config_conflicts(cfg, names)
    if problems:
        raise ConfigError("\n".join(problems))


def device_problem(cfg: dict) -> str | None:
    """A CUDA device that this machine lacks (torch is imported only when the config names CUDA)."""
    if not str(cfg["device"]).startswith("cuda"):
        return None
    from evomal.learning.devices import resolve_device

    try:
        resolve_device(cfg["device"])
    except ValueError as exc:
        return f"config key device: {exc}"
    return None


def experiments_written(workflow, cfg: dict) -> list[str]:
    """Experiments that this run's jobs write: the ``experiment`` wildcard of every job it will run."""
    try:
        names = {dict(job.wildcards).get("experiment") for job in workflow.dag.needrun_jobs()}
    except AttributeError:  # an internal API of Snakemake changed: claim what the config runs
        names = set(cfg["run"]) | {o for n in cfg["run"] for o in cfg["experiments"][n]["compare"]}
    return sorted(n for n in names if n)


def start_run(workflow, cfg: dict) -> Held:
    """``onstart``: take what the run holds while it lives, or refuse it (SystemExit 1) before any job."""
    held = Held()
    try:
        # Snakemake's own lock files of this run (its persistence object names them)
        own = list(getattr(getattr(workflow, "persistence", None), "_lockfile", {}).values())
        held = record_lock_owner(own)
        # cluster jobs check their own node's device
        if getattr(workflow, "local_exec", True) and (problem := device_problem(cfg)):
            raise Refused(problem)
        names = experiments_written(workflow, cfg)
        claims = claim_experiments(cfg["results_dir"], names)
        held.fds += claims.fds
        problems = config_conflicts(cfg, names)  # with the claims held: nobody rewrites config.yaml now
        if problems:
            raise Refused("\n".join(problems))
    except (ClaimError, Refused) as exc:
        held.release()
        for line in str(exc).splitlines():
            print(f"evomal: error: {line}", file=sys.stderr)
        raise SystemExit(1) from None
    results = Path(cfg["results_dir"])
    for name in names:  # claimed: no other run writes there, and this run's jobs have not started
        remove_orphans(results / name, unnamed=True)
    remove_orphans(results, recursive=False)  # e.g. a half-created .mlflow.db.*.tmp of a killed writer
    return held


def finish_run(held: list[Held]) -> None:
    """``onsuccess`` / ``onerror``: delete this run's lock record and release its claims."""
    for h in held:
        h.release()
