"""Quality benchmark: do the learned losses beat the baseline on data the search never saw?

    python bench/bench_quality.py                        # every task, both settings, write docs
    python bench/bench_quality.py --tasks mnist1d        # one task (mnist1d, diabetes, fashion)
    python bench/bench_quality.py --report-only          # tables from finished runs in --workdir

Per task, two EvoMAL searches with the same GP, data and seeds:
- `paper`: the reference's selection (best search fitness wins, one-point fitness, no anchoring);
- `project`: this project's defaults (generation 0 anchored at the baseline and known forms, fitness
  averaged over the last 3 evaluations, 5 finalists re-scored from scratch on validation).
Each selected loss is meta-tested over --seeds seeds (default 10: on MNIST-1D, float rounding alone moved a
five-seed comparison from p 0.35 to p 0.003, docs/benchmarks.md "Default experiment") against the baseline (CE / MSE) and the stronger reference
(label-smoothed CE 0.1 / Huber), every method with the same seed, initialisation and batch order, on data
with large validation and test splits. Paired t-tests over seeds; the Spearman rank correlation between
the search fitness and the finalists' full-budget validation metric says how well the short training
predicts the full one. Each task is one `snakemake` run in --workdir (the repository's results/ is never
touched). Writes the "## Quality" section of docs/benchmarks.md (only that section).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DOC, fmt, md_table, run_snakemake, write_section, write_yaml  # noqa: E402

#: meta-test seeds (``--seeds`` sets how many)
SEEDS = list(range(10))
MLP = {"name": "mlp", "hidden": [100, 100]}

#: task -> the shared part of both experiments (the `project` settings add anchoring, finalists, averaging)
TASKS = {
    "mnist1d": {"dataset": {"name": "mnist1d", "num_samples": 10000, "validation_fraction": 0.15}, "model": MLP,
                "search": {"population": 12, "generations": 4}, "local_search": {"meta_steps": 50},
                "training": {"steps": 1000, "lr": 0.05, "momentum": 0.9, "batch_size": 128},
                "meta_test": {"steps": 3000, "eval_every": 500}},
    "diabetes": {"dataset": "diabetes", "model": MLP,
                 "search": {"population": 12, "generations": 4}, "local_search": {"meta_steps": 50},
                 "training": {"steps": 300, "lr": 0.01, "momentum": 0.9, "batch_size": 64},
                 "meta_test": {"steps": 3000, "eval_every": 500}},
    "fashion": {"dataset": {"name": "fashion_mnist", "train_size": 5000}, "model": "lenet5",
                "search": {"population": 10, "generations": 3}, "local_search": {"meta_steps": 30},
                "training": {"steps": 200, "lr": 0.01, "momentum": 0.9, "batch_size": 128},
                "meta_test": {"steps": 2000, "eval_every": 500}},
}
VARIANTS = {
    "paper": {"search": {"anchor": False, "elitism": 0.05}, "selection": {"finalists": 0}, "fitness": {}},
    "project": {"search": {"anchor": True, "elitism": 0.05}, "selection": {"finalists": 5},
                "fitness": {"average_last": 3}},
}


def experiments(task: str, seeds: list[int] = SEEDS) -> dict:
    out = {}
    for variant, over in VARIANTS.items():
        exp = copy.deepcopy(TASKS[task])
        exp.update(method="evomal", seed=0)
        exp["search"].update(over["search"])
        exp["selection"] = dict(over["selection"])
        exp["fitness"] = dict(over["fitness"])
        exp["meta_test"].update(seeds=list(seeds), references=["label_smoothing", "huber"])
        out[f"q-{task}-{variant}"] = exp
    return out


def task_config(task: str, device: str, seeds: list[int] = SEEDS) -> dict:
    exps = experiments(task, seeds)
    return {"run": list(exps), "results_dir": "results", "tracking_uri": "sqlite:///results/mlflow.db",
            "shards": 2, "device": device, "experiments": exps}


def paired(per_seed: pd.DataFrame, a: str, b: str) -> tuple[float, float, int, int]:
    """mean(a - b), two-sided paired t-test p, seeds a wins / loses against b."""
    x = per_seed[per_seed["method"] == a].set_index("seed")["test_metric"]
    y = per_seed[per_seed["method"] == b].set_index("seed")["test_metric"].reindex(x.index)
    d = x - y
    p = float(stats.ttest_rel(x, y).pvalue) if d.abs().sum() > 0 else 1.0
    return float(d.mean()), p, int((d < 0).sum()), int((d > 0).sum())


def spearman(exp_dir: Path) -> str:
    path = exp_dir / "finalists.tsv"
    if not path.exists():
        return "-"
    frame = pd.read_csv(path, sep="\t", keep_default_na=False)
    learned = frame[frame["id"] != "baseline"]
    if len(learned) < 3:
        return "-"
    rho = stats.spearmanr(learned["search_fitness"].astype(float), learned["validation_mean"].astype(float))
    return f"{rho.statistic:.2f} (n {len(learned)})"


def task_rows(task: str, workdir: Path) -> tuple[list[list[str]], list[list[str]]]:
    rows, formulas = [], []
    res = workdir / task / "results"
    for name in experiments(task):
        exp_dir = res / name
        if not (exp_dir / "meta_test.tsv").exists():
            continue
        per_seed = pd.read_csv(exp_dir / "meta_test.tsv", sep="\t", keep_default_na=False)
        ref = next(m for m in ("label_smoothing", "huber") if m in set(per_seed["method"]))
        means = per_seed.groupby("method")["test_metric"].agg(["mean", "std"])
        d_base, p_base, w_base, l_base = paired(per_seed, "evomal", "baseline")
        d_ref, p_ref, w_ref, l_ref = paired(per_seed, "evomal", ref)
        cell = lambda m: f"{fmt(means.loc[m, 'mean'])} +- {fmt(means.loc[m, 'std'], 2)}"  # noqa: E731
        rows.append([task, name.rsplit("-", 1)[1], cell("baseline"), cell(ref), cell("evomal"),
                     f"{fmt(d_base, 3)} (p {fmt(p_base, 2)}, {w_base}/{l_base})",
                     f"{fmt(d_ref, 3)} (p {fmt(p_ref, 2)}, {w_ref}/{l_ref})", spearman(exp_dir)])
        doc = json.loads((exp_dir / "best" / "loss.json").read_text())
        formulas.append([task, name.rsplit("-", 1)[1], f"`{doc['expression']}`", f"`{doc['formula']}`",
                         doc.get("selected_by", "search fitness"),
                         {True: "yes", False: "no"}.get(doc.get("beats_baseline_on_validation"), "-")])
    return rows, formulas


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="mnist1d,diabetes,fashion")
    p.add_argument("--workdir", default="/tmp/evomal-bench/quality10")
    p.add_argument("--seeds", type=int, default=len(SEEDS), help="meta-test seeds 0 .. N-1")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--note", default="", help="a line added to the section (e.g. machine load)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    tasks = [t for t in args.tasks.split(",") if t]
    walls_path = workdir / "walls.json"
    walls = json.loads(walls_path.read_text()) if walls_path.exists() else {}
    for task in tasks if not args.report_only else []:
        wdir = workdir / task
        write_yaml(wdir / "config.yaml", task_config(task, args.device, list(range(args.seeds))))
        wall, rc = run_snakemake(wdir, "config.yaml", cores=args.cores)
        walls[task] = {"wall_s": wall, "rc": rc}
        walls_path.write_text(json.dumps(walls, indent=1))
        print(f"{task}: snakemake rc {rc}, {wall:.0f} s wall (both settings)", flush=True)
    rows, formulas = [], []
    for task in TASKS:
        r, f = task_rows(task, workdir)
        rows += r
        formulas += f
    settings = [f"- {t}: {json.dumps(TASKS[t])}; both settings in one run, {walls[t]['wall_s']:.0f} s wall on "
                f"{args.cores} cores" for t in TASKS if t in walls]
    lines = ["## Quality", "", f"`python bench/bench_quality.py --tasks {args.tasks} --seeds {args.seeds}`", "",
             "Two searches per task with the same GP, data and seeds: `paper` (best search fitness wins, "
             "one-point fitness, no anchoring) and `project` (generation 0 anchored, fitness averaged over the "
             "last 3 evaluations, 5 finalists re-scored from scratch on validation). The selected loss is "
             f"meta-tested over seeds 0-{args.seeds - 1} against the baseline and the stronger reference "
             "(label-smoothed CE 0.1 / Huber), same seeds, initialisations and batch orders. Test metric: error rate or MSE, lower "
             "is better; `vs` columns: mean(learned - other), paired t-test p, seeds won/lost. Spearman: "
             "search fitness against the finalists' full-budget validation metric.", "", "Settings:",
             *settings, ""]
    if args.note:
        lines += [args.note, ""]
    lines += [md_table(["task", "settings", "baseline", "reference", "learned", "learned vs baseline",
                        "learned vs reference", "Spearman"], rows), "", "Selected losses:", "",
              md_table(["task", "settings", "expression", "formula", "selected by", "beats baseline on val"],
                       formulas), ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(DOC, "Quality", section)


if __name__ == "__main__":
    main()
