# Config resolution, paths and input functions shared by the stage rules.
from evomal.pipeline.config import resolve_config
from evomal.core.files import read_json
from evomal.learning.fitness_measure import non_reference
from evomal.methods import get_method

# parse-time imports stay free of torch, MLflow, SymPy and pandas (tests/test_startup.py)
from evomal.pipeline.contract import CMAES_STATE, PLOT_FILES, SUMMARY_HTML, SUMMARY_MD, active_shards, results_inputs
from evomal.pipeline.contract import (
    BASELINE_ARM,
    BOOKKEEPING_PRIORITY,
    FINALIST_SCORES,
    LEARNED_PREFIX,
    META_TEST_TARGET,
    REFERENCES_ARM,
    SEARCH_PRIORITY,
    TEST_RUNS,
    TRANSFER_PREFIX,
    finalist_parts,
    finalist_scores_file,
    target_spec,
    test_run_file,
    test_run_priority,
    test_targets,
)

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


def finalist_score_files(wildcards):
    """finalist_scores/part_<k>.json of each part of the finalists (one per shard, at most one per loss)."""
    d = f"{RESULTS}/{wildcards.experiment}"
    return [f"{d}/{finalist_scores_file(k)}" for k in range(finalist_parts(exp_of(wildcards), CFG["shards"]))]


# --- meta-test and transfer: one test_run job per (target, arm), workflow/rules/testing.smk
def test_arms(wildcards):
    """baseline, references (when the config names any), then each learned loss (learned-<method>)."""
    arms = [BASELINE_ARM]
    if exp_of(wildcards)["meta_test"]["references"]:
        arms.append(REFERENCES_ARM)
    return arms + [f"{LEARNED_PREFIX}{method}" for method in learned_losses(wildcards)]


def test_run_files(wildcards, target):
    return [f"{RESULTS}/{wildcards.experiment}/{test_run_file(target, arm)}" for arm in test_arms(wildcards)]


def transfer_run_files(wildcards):
    """target -> its arms' files, for every transfer target of the config (transfer_<i>)."""
    return {t: test_run_files(wildcards, t) for t in test_targets(exp_of(wildcards)) if t != META_TEST_TARGET}


def test_run_inputs(wildcards):
    """A learned arm trains with its loss file; the baseline and the references need nothing."""
    if wildcards.arm.startswith(LEARNED_PREFIX):
        return {"loss": learned_losses(wildcards)[wildcards.arm[len(LEARNED_PREFIX) :]]}
    return {}


def run_priority(wildcards):
    """Learned arms first, then the longest (evomal.pipeline.contract.test_run_priority)."""
    return test_run_priority(exp_of(wildcards), test_arms(wildcards), wildcards.target, wildcards.arm)


def test_run_params(wildcards):
    """What an arm's runs depend on: its target, the experiment's seed, training and meta-test settings."""
    exp = exp_of(wildcards)
    meta_test = {k: v for k, v in exp["meta_test"].items() if k != "references" or wildcards.arm == REFERENCES_ARM}
    return {
        "target": target_spec(exp, wildcards.target),
        "seed": exp["seed"],
        "training": exp["training"],
        "meta_test": meta_test,
    }


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
    if has_generations(name) and exp_of(wildcards)["selection"]["finalists"] > 0:
        inputs["finalists"] = f"{d}/finalists.tsv"
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
        inputs.update(
            transfer=f"{d}/transfer.tsv",
            transfer_summary=f"{d}/transfer_summary.tsv",
            transfer_curves=f"{d}/report/{PLOT_FILES['transfer_curves']}",
        )
    return inputs


# --------------------------------------------------------------------------- TaylorGLO (taylorglo.smk)
def previous_cmaes_state(wildcards):
    """Generation g is sampled only from generation g-1's CMA-ES state."""
    g = int(wildcards.gen)
    return {} if g == 0 else {"state": gen_path(wildcards.experiment, g - 1, CMAES_STATE)}


def taylorglo_shards(wildcards):
    """Every sample is evaluated, dealt round robin (ask_stage): the first min(population, shards) shards."""
    n = min(exp_of(wildcards)["search"]["population"], CFG["shards"])
    return [gen_path(wildcards.experiment, wildcards.gen, f"shards/evaluate_{s}.json") for s in range(n)]


def cmaes_params(wildcards):
    """What sampling depends on; `generations` is left out so raising it extends a finished run."""
    exp = exp_of(wildcards)
    return {"population": exp["search"]["population"], "taylorglo": exp["taylorglo"], "seed": exp["seed"]}


def generation_check_inputs(wildcards):
    """The check job's inputs (workflow/rules/check.smk); while the DAG is built, the quick check of the
    generation's candidate files deletes its check record when one changed or vanished: the job reruns."""
    from evomal.pipeline.check import recheck_if_damaged

    for damage in recheck_if_damaged(gen_path(wildcards.experiment, wildcards.gen, "")):
        print(f"evomal: {damage}; its check job recomputes it", file=sys.stderr)
    return {
        "filter": gen_path(wildcards.experiment, wildcards.gen, "filter.json"),
        "table": gen_path(wildcards.experiment, wildcards.gen, "fitness.tsv"),
    }


def contract_targets(name):
    """The files of an experiment's contract made by the workflow, as targets, so that a deleted one is
    made again (Snakemake does not remake a missing intermediate file whose consumers are up to date)."""
    from types import SimpleNamespace

    targets = []
    if has_generations(name):
        for g in range(last_generation(name) + 1):
            targets += [gen_path(name, g, f) for f in ("population.json", "filter.json", "fitness.tsv", "archive.json")]
            targets.append(f"{RESULTS}/{name}/checks/gen_{g}.json")
    w = SimpleNamespace(experiment=name)
    for group in (report_inputs(w), best_inputs(w) if searches(name) and has_generations(name) else {}):
        for value in group.values():
            targets += [value] if isinstance(value, str) else list(value)
    return targets


# where and how a learning stage computes (never what: no output depends on them beyond float rounding)
LEARNING_OPTIONS = {"device": CFG["device"], "batching": CFG["batching"]}
STAGE_OPTIONS = {**LEARNING_OPTIONS, "recompute": CFG["recompute"]}


def job_workers():
    """Worker processes for the training jobs (evomal.core.workers): one per core when jobs are threads
    of this Snakemake process (force-use-threads) and `job_processes` is on; else 0, the job's own thread.
    Called in onstart (evomal.core.workers.use_workers): the execution settings do not exist yet while the
    Snakefile is parsed."""
    settings = workflow.execution_settings
    if not (CFG["job_processes"] and workflow.is_main_process and settings is not None and settings.use_threads):
        return 0
    try:
        return int(workflow.cores)
    except Exception:  # no --cores (a dry run, --lint): no job runs
        return 0


def early_stop_on(wildcards):
    return exp_of(wildcards)["early_stop"]["enabled"]


def evaluate_training_params(wildcards):
    """Off, early stopping leaves the params of runs made before it existed (no spurious rerun)."""
    exp = exp_of(wildcards)
    return {**exp["training"], "early_stop": exp["early_stop"]} if early_stop_on(wildcards) else exp["training"]


# --------------------------------------------------------------------------- analyses (analysis.smk)
from evomal.pipeline.analysis import (
    ANALYSIS_FILES,
    analysis_targets as _analysis_files,
    check_primitive_sources,
    counts_primitives,
)

LR_SWEEP_FILES = {k: f"{EXP_DIR}/{v}" for k, v in ANALYSIS_FILES["lr_sweep"].items()}
LANDSCAPE_FILES = {k: f"{EXP_DIR}/{v}" for k, v in ANALYSIS_FILES["landscape"].items()}
PRIMITIVE_FILES = {k: f"{EXP_DIR}/{v}" for k, v in ANALYSIS_FILES["primitive_stats"].items()}


def analysis_targets(name):
    targets = _analysis_files(f"{RESULTS}/{name}", CFG["experiments"][name])
    if CFG["experiments"][name]["analysis"]["primitive_stats"]["enabled"]:
        check_primitive_sources(name, primitive_sources(name))  # before any job runs
    return targets


def primitive_sources(name):
    """Every GP search of the run: its best loss and its generations' fitness tables."""
    return {
        other: {
            "best": f"{RESULTS}/{other}/best/loss.json",
            "tables": [gen_path(other, g, "fitness.tsv") for g in range(last_generation(other) + 1)],
        }
        for other in CFG["run"]
        if counts_primitives(CFG["experiments"][other]["method"])
    }


def primitive_inputs(wildcards):
    sources = primitive_sources(wildcards.experiment)
    return [path for src in sources.values() for path in [src["best"], *src["tables"]]]


def tracked_results(wildcards):
    """Result files track_results logs: meta-test and transfer tables, the best loss, the finalists."""
    name = wildcards.experiment
    finalists = has_generations(name) and exp_of(wildcards)["selection"]["finalists"] > 0
    return results_inputs(f"{RESULTS}/{name}", exp_of(wildcards), searches=searches(name), finalists=finalists)
