"""Quality benchmark: does the learned loss beat the baseline on real data? (EvoMAL vs baseline vs GP-LFL)

    python bench/bench_quality.py                      # run every task, print the tables, write docs
    python bench/bench_quality.py --tasks digits       # one task (digits, diabetes, fashion)
    python bench/bench_quality.py --report-only        # tables from finished runs in --workdir, no training
    python bench/bench_quality.py --size small         # smaller searches (about 12 minutes)

Each task is one `snakemake` run of a config written here (into --workdir, a scratch folder; the
repository's results/ is never touched). An EvoMAL experiment names its GP-LFL twin in `compare`, so both
learned losses are meta-tested against the baseline (CE / MSE) in one table, with the same seeds, the
same initialisations and the same batch order. Sizes are CPU-sized (see SIZES below and the section
this writes): far smaller searches than the paper's, so read the numbers as a check of the pipeline on
real data, not as a reproduction.

Writes the "## Quality" section of docs/benchmarks.md (only that section).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DOC, fmt, md_table, read_tsv, run_snakemake, write_section, write_yaml  # noqa: E402

SEEDS = [0, 1, 2, 3, 4]

MLP = {"name": "mlp", "hidden": [100, 100]}
TRAIN_MLP = {"steps": 300, "lr": 0.01, "momentum": 0.9, "batch_size": 128}


def _pair(name: str, dataset, model, *, population: int, generations: int, meta_steps: int, training: dict,
          meta_test_steps: int, eval_every: int, gplfl: bool) -> dict:
    """An EvoMAL experiment and (optionally) its GP-LFL twin: same task, same GP, same seed."""
    base = {"seed": 0, "dataset": dataset, "model": model,
            "search": {"population": population, "generations": generations},
            "training": dict(training),
            "meta_test": {"steps": meta_test_steps, "seeds": SEEDS, "eval_every": eval_every}}
    evomal = {**copy.deepcopy(base), "method": "evomal", "local_search": {"meta_steps": meta_steps}}
    exps = {name: evomal}
    if gplfl:
        exps[f"{name}-gplfl"] = {**copy.deepcopy(base), "method": "gplfl"}
        evomal["compare"] = [f"{name}-gplfl"]
    return exps


#: size -> task -> (main experiment, experiments). "small": about 12 minutes on a busy 2-core machine
#: (Fashion-MNIST's LeNet-5 meta-test is most of it); "medium": about 20-25 minutes.
def _mlp_tasks(population: int, generations: int) -> dict:
    """digits and diabetes with the same MLP search, each with its GP-LFL twin."""
    return {task: (f"q-{task}-mlp", _pair(f"q-{task}-mlp", task, MLP, population=population,
                                          generations=generations, meta_steps=100, training=TRAIN_MLP,
                                          meta_test_steps=3000, eval_every=500, gplfl=True))
            for task in ("digits", "diabetes")}


def _fashion_task(population: int, generations: int, meta_steps: int, steps: int, eval_every: int) -> dict:
    name = "q-fashion-mnist-lenet5"
    return {"fashion": (name, _pair(
        name, {"name": "fashion_mnist", "train_size": 5000}, "lenet5", population=population,
        generations=generations, meta_steps=meta_steps,
        training={"steps": steps, "lr": 0.01, "momentum": 0.9, "batch_size": 128},
        meta_test_steps=2000, eval_every=eval_every, gplfl=False))}


SIZES = {
    "small": {**_mlp_tasks(16, 6), **_fashion_task(10, 3, meta_steps=30, steps=200, eval_every=500)},
    "medium": {**_mlp_tasks(25, 10), **_fashion_task(12, 5, meta_steps=50, steps=300, eval_every=1000)},
}
SETTINGS = SIZES["medium"]


def task_config(task: str) -> dict:
    main, exps = SETTINGS[task]
    return {"run": [main], "results_dir": "results", "tracking_uri": "sqlite:///results/mlflow.db",
            "shards": 2, "experiments": exps}


def settings_line(exp: dict) -> str:
    model = exp["model"] if isinstance(exp["model"], str) else f"{exp['model']['name']} {exp['model'].get('hidden', '')}"
    ds = exp["dataset"] if isinstance(exp["dataset"], str) else \
        f"{exp['dataset']['name']} (train_size {exp['dataset'].get('train_size')})"
    return (f"{ds}, {model}; population {exp['search']['population']} x {exp['search']['generations']} generations, "
            f"{exp.get('local_search', {}).get('meta_steps', 0)} meta steps, {exp['training']['steps']} fitness steps "
            f"(SGD lr {exp['training']['lr']}, momentum {exp['training'].get('momentum', 0)}); meta-test "
            f"{exp['meta_test']['steps']} steps x {len(exp['meta_test']['seeds'])} seeds")


def ran_config(task: str, workdir: Path) -> tuple[str, dict]:
    """(main experiment, experiments) of the config that actually ran in ``workdir/task``."""
    import yaml

    cfg = yaml.safe_load((workdir / task / "config.yaml").read_text())
    return cfg["run"][0], cfg["experiments"]


def task_tables(task: str, workdir: Path) -> tuple[list[list[str]], list[list[str]]]:
    main, exps = ran_config(task, workdir)
    res = workdir / task / "results"
    summary = read_tsv(res / main / "meta_test_summary.tsv")
    rows = []
    for r in summary:
        rows.append([task, r["target"], r["method"], r["n"], f"{fmt(r['mean'])} +- {fmt(r['std'])}",
                     fmt(r.get("mean_difference")), fmt(r.get("t_statistic"), 2), fmt(r.get("p_value"), 3),
                     f"{r.get('wins', '')}/{r.get('losses', '')}"])
    formulas = []
    for name, exp in exps.items():
        path = res / name / "best" / "loss.json"
        if path.exists():
            doc = json.loads(path.read_text())
            formulas.append([task, exp["method"], f"`{doc.get('expression')}`", f"`{doc.get('formula')}`",
                             fmt(doc.get("fitness")), str(doc.get("generation"))])
    return rows, formulas


def verdict(rows: list[list[str]]) -> list[str]:
    out = []
    for r in rows:
        task, method, diff, p = r[0], r[2], r[5], r[7]
        if method == "baseline" or diff in ("", "nan"):
            continue
        d = float(diff)
        if d == 0:
            out.append(f"- {task}, {method}: the same mean test metric as the baseline (no improvement; p = {p}).")
            continue
        better = "lower (better)" if d < 0 else "higher (worse)"
        sig = "" if p in ("", "nan") else (" significant at 5%" if float(p) < 0.05 else " not significant")
        out.append(f"- {task}, {method}: test metric {better} than the baseline by {abs(d):.4g};{sig} (p = {p}).")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="digits,diabetes,fashion")
    p.add_argument("--size", default="medium", choices=sorted(SIZES), help="settings of the searches (SIZES)")
    p.add_argument("--workdir", default=None, help="scratch folder (default /tmp/evomal-bench/quality-<size>)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--device", default="auto", help="device of every job (auto, cpu, cuda)")
    p.add_argument("--report-only", action="store_true", help="tables from finished runs, no snakemake")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--note", default="", help="a line added to the section (e.g. machine load)")
    args = p.parse_args(argv)
    global SETTINGS
    SETTINGS = SIZES[args.size]
    workdir = Path(args.workdir or f"/tmp/evomal-bench/quality-{args.size}")
    tasks = [t for t in args.tasks.split(",") if t]
    walls = {}
    walls_path = workdir / "walls.json"
    if walls_path.exists():
        walls = json.loads(walls_path.read_text())
    for task in tasks:
        if args.report_only:
            continue
        cfg = task_config(task)
        cfg["device"] = args.device
        wdir = workdir / task
        wdir.mkdir(parents=True, exist_ok=True)
        write_yaml(wdir / "config.yaml", cfg)
        wall, rc = run_snakemake(wdir, "config.yaml", cores=args.cores)
        walls[task] = {"wall_s": wall, "rc": rc, "command": " ".join(sys.argv[1:] if argv is None else argv)}
        walls_path.write_text(json.dumps(walls, indent=1))
        print(f"{task}: snakemake rc {rc}, {wall:.0f} s wall", flush=True)
    all_rows, all_formulas, settings = [], [], []
    for task in SETTINGS:
        if not (workdir / task / "config.yaml").exists():
            continue
        main_name, exps = ran_config(task, workdir)
        if not (workdir / task / "results" / main_name / "meta_test_summary.tsv").exists():
            continue
        rows, formulas = task_tables(task, workdir)
        all_rows += rows
        all_formulas += formulas
        wall = walls.get(task, {}).get("wall_s")
        settings.append(f"- {task}: {settings_line(exps[main_name])}"
                        + ("; GP-LFL twin with the same GP settings (`compare`)" if len(exps) > 1 else "")
                        + (f"; whole run {wall:.0f} s wall" if wall else "")
                        + (f" (`python bench/bench_quality.py {walls[task]['command']}`)"
                           if walls.get(task, {}).get("command") else ""))
    ran = {w.get("command", "") for w in walls.values()} if args.report_only else set()
    shown = list(sys.argv[1:] if argv is None else argv)
    if "--note" in shown:  # the note is printed below, not in the command
        i = shown.index("--note")
        del shown[i:i + 2]
    command = "python bench/bench_quality.py " + " ".join(shown)
    if ran:  # tables re-rendered from finished runs: name the command(s) that ran them
        command = "; ".join(f"python bench/bench_quality.py {c}".strip() for c in sorted(ran)) + \
            f" (tables: {command.strip()})"
    lines = ["## Quality", "", f"`{command.strip()}`", "",
             "Real data, seed 0 for the search, meta-test seeds 0-4 (every method: same seed, initialisation and "
             "batch order). Test metric: error rate (classification) or MSE (regression); lower is better. "
             "Paired t-test of each learned loss against the baseline over the seeds (meta_test_summary.tsv; "
             "`diff` = mean(method) - mean(baseline), `w/l` = seeds won / lost).", "",
             "Settings (CPU-sized, far below the paper's 25 x 50 generations):", *settings, ""]
    if args.note:
        lines += [args.note, ""]
    lines += [md_table(["task", "target", "method", "n", "test metric mean +- std", "diff", "t", "p", "w/l"],
                       all_rows), "", "Learned losses (`best/loss.json`):", "",
              md_table(["task", "method", "expression", "formula (meta-learned weights)", "fitness", "gen"],
                       all_formulas), "", "Verdict:", "", *verdict(all_rows), ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(DOC, "Quality", section)
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
