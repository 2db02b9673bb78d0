# Config resolution, paths and input functions shared by the stage rules.
from evomal.pipeline.config import resolve_config
from evomal.core.files import read_json
from evomal.methods import get_method
# parse-time imports stay free of torch, MLflow, SymPy and pandas (tests/test_startup.py)
from evomal.pipeline.contract import PLOT_FILES, SUMMARY_HTML, SUMMARY_MD, active_shards

CFG = resolve_config(config)
RESULTS = CFG["results_dir"]
EXP_DIR = f"{RESULTS}/{{experiment}}"
GEN_DIR = f"{EXP_DIR}/gen_{{gen}}"
LOGS = f"{RESULTS}/{{experiment}}/logs"
REPORT_DIR = f"{EXP_DIR}/report"


wildcard_constraints:
    experiment="[A-Za-z0-9_.-]+",
    gen=r"\d+",
    shard=r"\d+",


def exp_of(wildcards):
    return CFG["experiments"][wildcards.experiment]


def generations(wildcards):
    """Generations of the experiment's search (the progress line says `gen g/G`); not a param, so that
    raising it extends a finished run without re-running its generations."""
    return CFG["experiments"][wildcards.experiment]["search"]["generations"]


def last_generation(name):
    return CFG["experiments"][name]["search"]["generations"] - 1


def searches(name):
    """Whether the experiment's method learns a loss (best/loss.json): evomal, gplfl, ml3, taylorglo."""
    return get_method(CFG["experiments"][name]["method"]).searches


def has_generations(name):
    """Whether the experiment's method writes generation folders gen_<g>/ (GP and CMA-ES searches)."""
    return get_method(CFG["experiments"][name]["method"]).has_generations


def experiments_running(group):
    """Wildcard constraint: the experiments whose method runs the stage group ``group`` (registry
    STAGE_GROUPS); a method's own rules match only these, whatever other rules make the same files."""
    import re

    names = [n for n, e in CFG["experiments"].items() if group in get_method(e["method"]).stages]
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"  # (?!) matches nothing


def gen_path(experiment, gen, name):
    return f"{RESULTS}/{experiment}/gen_{gen}/{name}"


def previous_generation(wildcards):
    """Generation g is bred only from generation g-1's files."""
    g = int(wildcards.gen)
    if g == 0:
        return {}
    return {
        "population": gen_path(wildcards.experiment, g - 1, "population.json"),
        "fitness": gen_path(wildcards.experiment, g - 1, "fitness.tsv"),
    }


def previous_archive(wildcards):
    g = int(wildcards.gen)
    return {} if g == 0 else {"archive": gen_path(wildcards.experiment, g - 1, "archive.json")}


def evaluated_shards(wildcards):
    """Only shards that received candidates become jobs: known once the filter checkpoint ran."""
    filter_json = checkpoints.filter.get(**wildcards).output[0]
    # read_json: a damaged filter.json is reported by name, with how to repair it
    shards = active_shards(read_json(filter_json))
    return [gen_path(wildcards.experiment, wildcards.gen, f"shards/evaluate_{s}.json") for s in shards]


def best_inputs(wildcards):
    """The last generation's archive, and the finalists' table unless selection.finalists is 0."""
    name = wildcards.experiment
    inputs = {"archive": gen_path(name, last_generation(name), "archive.json")}
    if exp_of(wildcards)["selection"]["finalists"] > 0:
        inputs["finalists"] = f"{RESULTS}/{name}/finalists.tsv"
    return inputs


def search_params(wildcards):
    """What breeding depends on; `generations` is left out so raising it extends a finished run."""
    exp = exp_of(wildcards)
    search = {k: v for k, v in exp["search"].items() if k != "generations"}
    # keys added after a run was made leave its params unchanged at their defaults (no spurious rerun)
    search = {k: v for k, v in search.items() if k not in ("anchor", "anchor_forms") or v}
    return {"search": search, "seed": exp["seed"]}


def learned_losses(wildcards):
    """method -> best loss file: this experiment's own and those of the experiments it compares with."""
    exp = exp_of(wildcards)
    losses = {}
    if searches(wildcards.experiment):
        losses[exp["method"]] = f"{RESULTS}/{wildcards.experiment}/best/loss.json"
    for other in exp["compare"]:
        method = CFG["experiments"][other]["method"]
        if searches(other):
            losses[method if method not in losses else other] = f"{RESULTS}/{other}/best/loss.json"
    return losses


def experiment_targets(name):
    exp = CFG["experiments"][name]
    d = f"{RESULTS}/{name}"
    targets = [f"{d}/config.yaml", f"{d}/meta_test.tsv", f"{d}/report/summary.md", f"{d}/tracking/results.json"]
    if exp["transfer"]:
        targets.append(f"{d}/transfer.tsv")
    if searches(name):
        targets.append(f"{d}/best/loss.json")
    if has_generations(name):
        targets += [gen_path(name, g, "tracked.json") for g in range(last_generation(name) + 1)]
    targets += analysis_targets(name)  # opt-in analyses (workflow/rules/analysis.smk)
    targets += contract_targets(name)  # every file of the contract: a deleted one is made again (check.smk)
    return targets


def final_targets(wildcards):
    return [t for name in CFG["run"] for t in experiment_targets(name)]


def generation_tables(wildcards):
    name = wildcards.experiment
    return [gen_path(name, g, "fitness.tsv") for g in range(last_generation(name) + 1)]


def report_inputs(wildcards):
    """What the summary links or tabulates; sections an experiment lacks are simply not requested.

    Keys named like evomal.results.report.PLOT_FILES are the plots (PNG); the others are result files.
    """
    name = wildcards.experiment
    d = f"{RESULTS}/{name}"
    inputs = {
        "config": f"{d}/config.yaml",
        "meta_test": f"{d}/meta_test.tsv",
        "meta_test_summary": f"{d}/meta_test_summary.tsv",
        "meta_test_curves": f"{d}/report/{PLOT_FILES['meta_test_curves']}",
    }
    if has_generations(name):  # (keys in their old order: a search's inputs are as they always were)
        inputs["fitness_tables"] = generation_tables(wildcards)
    if searches(name):
        inputs.update(best_loss=f"{d}/best/loss.json", loss_py=f"{d}/best/loss.py")
    if has_generations(name):
        inputs.update(fitness=f"{d}/report/{PLOT_FILES['fitness']}", decisions=f"{d}/report/{PLOT_FILES['decisions']}")
    losses = learned_losses(wildcards)
    if losses:
        inputs["loss_shape"] = f"{d}/report/{PLOT_FILES['loss_shape']}"
    own = f"{d}/best/loss.json"
    compared = [path for path in losses.values() if path != own]
    if compared:
        inputs["compared"] = compared
    if exp_of(wildcards)["transfer"]:
        inputs.update(transfer=f"{d}/transfer.tsv", transfer_summary=f"{d}/transfer_summary.tsv",
                      transfer_curves=f"{d}/report/{PLOT_FILES['transfer_curves']}")
    return inputs
