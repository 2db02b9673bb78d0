"""The file contract of a run (DESIGN §3): folder and file names, filter decisions, table columns.

Every layer that reads or writes a results folder takes these names from here (stage functions, tracking,
reports, the command line), so a folder written by one is understood by the others. Nothing here imports
torch, pandas or another module of the package.
"""
from __future__ import annotations

from pathlib import Path

#: Filter decisions in pipeline order (DESIGN §1.5).
DECISIONS = ("evaluate", "equivalent", "rejected", "gradient_equivalent", "invalid")

# per generation
POPULATION = "population.json"
FILTER = "filter.json"
FITNESS_TABLE = "fitness.tsv"
ARCHIVE = "archive.json"
TRACKED = "tracked.json"
CANDIDATES = "candidates"
SHARDS = "shards"

# per candidate (gen_<g>/candidates/<id>/)
LOSS_FILE = "loss.json"
OPTIMIZED_FILE = "optimized.pt"
FITNESS_FILE = "fitness.json"

# per generation of a CMA-ES search (TaylorGLO): the strategy's state once the generation was told
CMAES_STATE = "cmaes.json"

# per experiment
CONFIG_FILE = "config.yaml"
CHECKS = "checks"
BEST_LOSS = "best/loss.json"
BEST_SOURCE = "best/loss.py"
META_TEST = "meta_test.tsv"
META_TEST_SUMMARY = "meta_test_summary.tsv"
TRANSFER = "transfer.tsv"
TRANSFER_SUMMARY = "transfer_summary.tsv"

# per experiment, under report/ (the Snakemake rules build their paths from these at parse time)
PLOT_FILES = {
    "fitness": "fitness.png",
    "decisions": "decisions.png",
    "loss_shape": "loss_shape.png",
    "meta_test_curves": "meta_test_curves.png",
    "transfer_curves": "transfer_curves.png",
}
SUMMARY_MD = "summary.md"
SUMMARY_HTML = "summary.html"
#: every plot's PNG has a vector twin beside it (same name, this suffix)
VECTOR_SUFFIX = ".svg"

#: Columns of gen_<g>/fitness.tsv. No timings: the table is byte-identical whenever it is recomputed.
TABLE_COLUMNS = ["id", "expression", "origin", "parents", "key", "decision", "reason", "reuse_of", "fitness"]
FINALISTS = "finalists.tsv"
#: the validation scores of one part of the finalists and the baseline: finalist_scores/part_<k>.json
FINALIST_SCORES = "finalist_scores"
#: the ``id`` (and meta-test ``method``) of the task's own loss, cross-entropy / MSE
BASELINE = "baseline"
#: Columns of finalists.tsv; one ``seed_<s>`` column per validation seed goes after the first five.
FINALIST_COLUMNS = ["rank", "id", "generation", "expression", "search_fitness", "validation_mean",
                    "validation_std", "selected", "reason"]
#: Columns of meta_test.tsv and transfer.tsv.
PER_SEED_COLUMNS = ["target", "method", "seed", "test_metric", "metric", "diverged", "reason"]

#: one arm's runs on one target: test_runs/<target>-<arm>.json. Targets: ``meta_test`` (the experiment's
#: own task) or ``transfer_<i>``; arms: the baseline, the references, ``learned-<method>`` for each learned loss
TEST_RUNS = "test_runs"
META_TEST_TARGET, TRANSFER_PREFIX = "meta_test", "transfer_"
BASELINE_ARM, REFERENCES_ARM, LEARNED_PREFIX = BASELINE, "references", "learned-"


def test_run_file(target: str, arm: str) -> str:
    return f"{TEST_RUNS}/{target}-{arm}.json"


def target_spec(exp: dict, target: str) -> dict:
    """``{"dataset", "model", "steps"}`` of ``meta_test`` or ``transfer_<i>`` in the experiment's config."""
    if target == META_TEST_TARGET:
        return {"dataset": exp["dataset"], "model": exp["model"], "steps": exp["meta_test"]["steps"]}
    if target.startswith(TRANSFER_PREFIX) and target[len(TRANSFER_PREFIX):].isdigit():
        i = int(target[len(TRANSFER_PREFIX):])
        if i < len(exp["transfer"]):
            t = exp["transfer"][i]
            return {"dataset": t["dataset"], "model": t["model"], "steps": t.get("steps", exp["meta_test"]["steps"])}
    raise ValueError(f"unknown test target {target!r}: expected {META_TEST_TARGET!r} or "
                     f"{TRANSFER_PREFIX}<i> for i < {len(exp['transfer'])}")


def finalist_parts(exp: dict, shards: int) -> int:
    """Jobs that train the finalists: one per shard, at most one per loss (the baseline included)."""
    return max(1, min(int(shards), exp["selection"]["finalists"] + 1))


def finalist_scores_file(part: int) -> str:
    return f"{FINALIST_SCORES}/part_{part}.json"


def test_targets(exp: dict) -> list[str]:
    """``meta_test``, then ``transfer_<i>`` for each transfer target of the experiment's config."""
    return [META_TEST_TARGET] + [f"{TRANSFER_PREFIX}{i}" for i in range(len(exp["transfer"]))]


#: The scheduler's priorities (Snakemake gives a free core to the ready job of highest priority). The
#: search's chain (breeding, filter, shards, finalists, best loss) first: it gates the learned arms, which
#: end a run. Its bookkeeping (tracking, checks, plots, tables) next: it would hold a core the next stage
#: of the search needs. The test runs last (test_run_priority), filling the cores the search leaves idle.
SEARCH_PRIORITY = 2
BOOKKEEPING_PRIORITY = 1


def test_run_priority(exp: dict, arms: list[str], target: str, arm: str) -> float:
    """The scheduler's priority of a test run, in (0, BOOKKEEPING_PRIORITY): the test runs ranked
    with the learned arms first, then the most training steps first (ties: the targets' order).

    The learned arms wait for the search and its finalists, so they are the ones that end a run; the
    baseline and reference arms fill cores while the search runs. Longest first leaves the shortest runs
    for the end, when the last of them keep one core busy while the other has nothing left to run."""
    targets = test_targets(exp)

    def key(run: tuple[str, str]) -> tuple:
        t, a = run
        losses = len(exp["meta_test"]["references"]) if a == REFERENCES_ARM else 1
        return (a.startswith(LEARNED_PREFIX), losses * target_spec(exp, t)["steps"], -targets.index(t))

    ranked = sorted(((t, a) for t in targets for a in arms), key=key)  # stable: the arms' order breaks ties
    return (ranked.index((target, arm)) + 1) / (len(ranked) + 1)


def check_record(exp_dir: str | Path, generation: int) -> Path:
    """``checks/gen_<g>.json``: the digests of a generation's candidate files once its check job verified
    them (outside the generation folder, which holds only what the stages made)."""
    return Path(exp_dir) / CHECKS / f"gen_{generation}.json"


def generation_dir(exp_dir: str | Path, generation: int) -> Path:
    return Path(exp_dir) / f"gen_{generation}"


def candidate_dir(gen_dir: str | Path, cand_id: str) -> Path:
    return Path(gen_dir) / CANDIDATES / cand_id


def shard_members(filter_doc: dict, shard: int) -> list[dict]:
    """The candidates of a filter.json that a per-shard stage job computes."""
    return [c for c in filter_doc["candidates"] if c["decision"] == "evaluate" and c["shard"] == shard]


def vector_path(png_path: str | Path) -> Path:
    """The SVG twin of a plot's PNG (same name, ``.svg``)."""
    return Path(png_path).with_suffix(VECTOR_SUFFIX)


def results_inputs(exp_dir: str, exp: dict, *, searches: bool, finalists: bool = False) -> dict[str, str]:
    """Result files the track_results rule reads, for an experiment's resolved config ``exp``;
    ``searches``: whether its method learns a loss (then its best loss is logged too); ``finalists``:
    whether its search re-scores finalists (finalists.tsv is logged too)."""
    inputs = {"meta_test": f"{exp_dir}/{META_TEST}", "meta_test_summary": f"{exp_dir}/{META_TEST_SUMMARY}"}
    if exp["transfer"]:
        inputs.update(transfer=f"{exp_dir}/{TRANSFER}", transfer_summary=f"{exp_dir}/{TRANSFER_SUMMARY}")
    if searches:
        inputs["best"] = f"{exp_dir}/{BEST_LOSS}"
    if finalists:
        inputs["finalists"] = f"{exp_dir}/{FINALISTS}"
    return inputs


def active_shards(filter_doc: dict) -> list[int]:
    """Shards that received candidates: only these become jobs."""
    return sorted({c["shard"] for c in filter_doc["candidates"] if c["decision"] == "evaluate"})


def learned_beats_baseline(finalists) -> bool:
    """Whether the selected finalist of a finalists.tsv table (a DataFrame) has a lower mean validation
    metric than the baseline."""
    base = finalists.loc[finalists["id"] == BASELINE, "validation_mean"]
    chosen = finalists.loc[finalists["selected"].astype(bool), "validation_mean"]
    return bool(len(base) and len(chosen) and float(chosen.iloc[0]) < float(base.iloc[0]))
