"""Throughput, round 2: every figure a ratio measured within one run (the machine may be shared).

    python bench/bench_throughput.py            # all parts, writes "Throughput, round 2" in docs/benchmarks.md
    python bench/bench_throughput.py --quick    # smaller counts, a smoke run (--no-write to print only)

The unit is one plain SGD step of an MLP 10-1000-1000-1 on diabetes, batch 128 (MSE, lr 0.01, no
momentum), one thread, measured in this run before and after the rest; the authors' code needed 3,000
such units per generation at the diabetes-mlp-ref settings. Parts:
  (a) the unit, and a step at the authors' SGD settings (momentum 0.9, Nesterov, weight decay 5e-4);
  (b) one candidate at diabetes-mlp-ref settings, in-process on one thread: local search without and with
      the shared LocalSearchPlan (bitwise equal weights checked), fitness; candidates per core-minute;
  (c) the preset search itself (`snakemake --cores 2`, search only) in units per generation, against 3,000;
      start-up (`snakemake -n` on the finished search) and the heavy modules its parse imports;
  (d) early stopping on three small searches: fitness-training steps saved, and whether the best loss found
      is the same as with early stopping off.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import (DOC, PYTHON, REPO, fresh, md_table, one_experiment_config,  # noqa: E402
                            run_snakemake, snakemake_env_note, write_section, write_yaml)

from evomal.gp.expressions import parse  # noqa: E402
from evomal.learning.plan import LocalSearchPlan  # noqa: E402
from evomal.learning.training import fitness, unrolled_local_search  # noqa: E402
from evomal.losses.modules import CompiledLoss, initial_weights  # noqa: E402
from evomal.pipeline.config import resolve_config  # noqa: E402
from evomal.tasks.datasets import load_task  # noqa: E402
from evomal.tasks.models import build_model  # noqa: E402

TITLE = "Throughput, round 2"
REF_UNITS_PER_GENERATION = 3000
PRESET = REPO / "config" / "experiments" / "diabetes-mlp-ref.yaml"
#: regression candidates of the kind a search evaluates (MSE-like, MAE-like, a deeper one)
CANDIDATES = ["square(sub(f, y))", "sqrt(abs(sub(f, y)))", "add(square(sub(f, y)), mul(tanh(f), sub(y, f)))"]


# --------------------------------------------------------------------------- (a) the unit
def step_seconds(task, *, repeats: int, steps: int, **sgd) -> float:
    """Median seconds of one SGD step of MLP 10-1000-1000-1, batch 128, on a fixed batch."""
    model = build_model("mlp", task.input_shape, 1, seed=0, hidden=[1000, 1000])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, **sgd)
    x, y = task.x_train[:128], task.y_train[:128]
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(x), y).backward()
            opt.step()
        if r:  # the first round warms up
            times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


# --------------------------------------------------------------------------- (b) one candidate
def candidate_costs(task, exp: dict, *, shard_size: int, unit, rounds: int) -> dict:
    """Costs in plain-step units, each measured against ``unit()`` timed right before and after it."""
    ls, tr = exp["local_search"], exp["training"]
    sgd = dict(lr=tr["lr"], momentum=tr["momentum"], nesterov=tr["nesterov"], weight_decay=tr["weight_decay"],
               batch_size=tr["batch_size"])
    kw = dict(steps=ls["meta_steps"], meta_lr=ls["meta_lr"], inner_steps=ls["inner_steps"], seed=exp["seed"], **sgd)
    hidden = exp["model"]["hidden"]
    build = lambda: build_model("mlp", task.input_shape, 1, seed=exp["seed"], hidden=hidden)  # noqa: E731

    def in_units(fn):
        before = unit()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        return out, seconds / statistics.median([before, unit()])

    shared_model = build()
    plan_units = []
    for _ in range(rounds):
        plan, u_plan = in_units(lambda: LocalSearchPlan.build(
            task, shared_model, steps=ls["meta_steps"], inner_steps=ls["inner_steps"], batch_size=tr["batch_size"],
            seed=exp["seed"]))
        plan_units.append(u_plan)
    alone, shared, fit = [], [], []
    for r in range(rounds):
        for i, expr in enumerate(CANDIDATES):  # interleaved: a busy moment slows both alike
            tree = parse(expr)
            fresh_loss = lambda: CompiledLoss(tree, "regression", initial_weights(tree, seed=i))  # noqa: E731
            # the network is built per candidate without the plan, as before it
            run_alone = lambda: unrolled_local_search(fresh_loss(), task, build(), **kw)  # noqa: E731
            run_shared = lambda: unrolled_local_search(fresh_loss(), task, shared_model, plan=plan, **kw)  # noqa: E731
            if (r + i) % 2:  # alternate which goes first
                (s, u_s), (a, u_a) = in_units(run_shared), in_units(run_alone)
            else:
                (a, u_a), (s, u_s) = in_units(run_alone), in_units(run_shared)
            alone.append(u_a)
            shared.append(u_s)
            assert torch.equal(a.weights, s.weights) and a.curve == s.curve, f"plan changed the result of {expr}"
            loss = CompiledLoss(tree, "regression", s.weights)
            fit.append(in_units(lambda: fitness(loss, task, build(), steps=tr["steps"], seed=exp["seed"], **sgd))[1])
    med = statistics.median
    plan_u = med(plan_units)
    per_alone = med(alone) + med(fit)
    per_shared = med(shared) + plan_u / shard_size + med(fit)
    return {"alone": med(alone), "shared": med(shared), "plan": plan_u, "fitness": med(fit), "n": len(alone),
            "per_alone": per_alone, "per_shared": per_shared, "shard_size": shard_size, "stored": len(plan.states),
            "meta_steps": ls["meta_steps"], "steps": tr["steps"]}


# --------------------------------------------------------------------------- (c) the preset search
HEAVY = ("torch", "mlflow", "sympy", "pandas", "matplotlib")


def parse_imports(wdir: Path, tree: Path = REPO, pythonpath: str | None = None) -> list[str]:
    """Heavy modules in sys.modules after an in-process `snakemake -n` of the finished search."""
    import os

    code = ("import json, sys\nsys.argv = ['snakemake', '-s', %r, '--configfile', 'config.yaml', '--cores', '2', "
            "'-n', '-q']\nfrom snakemake.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps([m for m in %r if m in sys.modules]))" % (str(tree / "Snakefile"), HEAVY))
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    out = subprocess.run([str(PYTHON), "-c", code], cwd=wdir, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def startup_against(wdir: Path, baseline: str | None, *, repeats: int) -> dict:
    """`snakemake -n` on the finished search with this tree and with ``baseline``'s (a git revision, exported
    with `git archive`), interleaved; and which heavy modules each one's parse imported."""
    import os
    import tarfile
    import tempfile

    trees = {"now": (REPO, None)}
    if baseline:
        old = Path(tempfile.mkdtemp(prefix="evomal-baseline-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", baseline], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(old, filter="data")
        trees["baseline"] = (old, str(old))
    times: dict[str, list[float]] = {k: [] for k in trees}
    for _ in range(repeats):
        for label, (tree, pythonpath) in trees.items():
            env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
            t0 = time.perf_counter()
            subprocess.run([str(PYTHON), "-m", "snakemake", "-s", str(tree / "Snakefile"), "--configfile", "config.yaml",
                            "--cores", "2", "-n", "-q"], cwd=wdir, env=env, capture_output=True)
            times[label].append(time.perf_counter() - t0)
    heavy = {label: parse_imports(wdir, tree, pythonpath) for label, (tree, pythonpath) in trees.items()}
    return {"seconds": {label: statistics.median(v) for label, v in times.items()}, "heavy": heavy,
            "baseline": baseline}


def preset_search(workdir: Path, *, repeats: int, baseline: str | None, unit) -> dict:
    preset = yaml.safe_load(PRESET.read_text())
    name = preset["run"][0]
    exp = preset["experiments"][name]
    wdir = fresh(workdir / "reference")
    write_yaml(wdir / "config.yaml", one_experiment_config(name, exp, shards=2, device="cpu"))
    gens = exp["search"]["generations"]
    unit_before = unit()
    wall, rc = run_snakemake(wdir, "config.yaml", cores=2, targets=[f"results/{name}/gen_{gens - 1}/fitness.tsv"])
    unit_after = unit()
    startup = startup_against(wdir, baseline, repeats=repeats)
    torch_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([str(PYTHON), "-c", "import torch"], check=True)
        torch_s.append(time.perf_counter() - t0)
    rows = [r for g in range(gens) for r in _tsv(wdir / "results" / name / f"gen_{g}" / "fitness.tsv")]
    compute = sum(json.loads(p.read_text())["seconds"] for p in (wdir / "results" / name).glob("gen_*/timings/*.json"))
    return {"wall": wall, "rc": rc, "generations": gens, "unit": [unit_before, unit_after], "startup": startup["seconds"]["now"], "startup_all": startup,
            "import_torch": statistics.median(torch_s), "compute": compute,
            "evaluated": sum(r["decision"] == "evaluate" for r in rows), "candidates": len(rows)}


def _tsv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


# --------------------------------------------------------------------------- (d) early stopping
def small_searches(quick: bool) -> list[tuple[str, dict]]:
    base = {"method": "evomal", "model": {"name": "mlp", "hidden": [64, 64]},
            "search": {"population": 10 if not quick else 8, "generations": 3 if not quick else 2},
            "local_search": {"meta_steps": 10}, "training": {"steps": 200, "lr": 0.01, "momentum": 0.9},
            "filters": {"rejection_steps": 50}, "meta_test": {"steps": 10, "seeds": [0], "eval_every": 10}}
    out = []
    for label, dataset, seed in (("digits-s0", "digits", 0), ("digits-s1", "digits", 1),
                                 ("diabetes-s0", "diabetes", 0)):
        exp = copy.deepcopy(base)
        exp.update(dataset=dataset, seed=seed)
        out.append((label, exp))
    return out


def search_outcome(wdir: Path, name: str, exp: dict) -> dict:
    gens = exp["search"]["generations"]
    write_yaml(wdir / "config.yaml", one_experiment_config(name, exp, shards=2, device="cpu"))
    wall, rc = run_snakemake(wdir, "config.yaml", cores=2, targets=[f"results/{name}/gen_{gens - 1}/archive.json"])
    exp_dir = wdir / "results" / name
    archive = json.loads((exp_dir / f"gen_{gens - 1}" / "archive.json").read_text())
    steps = resolve_config(one_experiment_config(name, exp))["experiments"][name]["training"]["steps"]
    trained = stopped = evaluated = 0
    fitness_s = 0.0
    for path in exp_dir.glob("gen_*/candidates/*/fitness.json"):
        doc = json.loads(path.read_text())
        evaluated += 1
        fitness_s += float(doc.get("timings", {}).get("fitness", 0.0))
        at = doc.get("stopped_at")
        stopped += at is not None
        trained += steps if at is None else at
    best = archive["best"] or {}
    return {"rc": rc, "wall": wall, "trained": trained, "fitness_s": fitness_s, "possible": evaluated * steps, "evaluated": evaluated,
            "stopped": stopped, "best": best.get("expression"), "best_fitness": best.get("fitness")}


def early_stopping(workdir: Path, quick: bool) -> list[dict]:
    out = []
    for label, exp in small_searches(quick):
        row = {"label": label}
        for mode in ("off", "on"):
            e = copy.deepcopy(exp)
            e["early_stop"] = {"enabled": mode == "on"}
            row[mode] = search_outcome(fresh(workdir / f"es-{label}-{mode}"), f"es-{label}", e)
        out.append(row)
    return out


# --------------------------------------------------------------------------- report
def render(args, units, ref_step, cand, preset, es) -> str:
    unit = statistics.median(units["1"])
    u = lambda s: f"{s / unit:,.0f}"  # noqa: E731
    pu = statistics.median(preset["unit"])  # the plain step right before and after the search

    def pu_row(label, seconds, versus=True):
        lo, hi = sorted(seconds / x for x in preset["unit"])
        ratio = f"**{REF_UNITS_PER_GENERATION * pu / seconds:.2f}x**" if versus else ""
        span = f"{REF_UNITS_PER_GENERATION / hi:.2f}-{REF_UNITS_PER_GENERATION / lo:.2f}x" if versus else ""
        return [label, f"{seconds / pu:,.0f}", f"{lo:,.0f}-{hi:,.0f}", ratio, span]

    g = preset["generations"]
    per_gen = preset["wall"] / g
    per_gen_ns = (preset["wall"] - preset["startup"]) / g
    cpm = lambda s: 60.0 / s  # noqa: E731
    st = preset["startup_all"]
    sec = st["seconds"]
    lines = [f"## {TITLE}", "", f"`{args.command}`", "",
             "Every figure is a ratio measured within this one run (the machine was shared with other "
             f"agents' jobs: {units['note']}), so compare ratios, not seconds. Unit: one plain SGD step "
             "of an MLP 10-1000-1000-1 on diabetes, batch 128 (MSE, lr 0.01, no momentum), on one thread (as "
             "every job of the workflow runs), timed next to what it measures: at the start and the end of the "
             f"run {units['1'][0] * 1e3:.1f} / {units['1'][1] * 1e3:.1f} ms, around the preset search "
             f"{preset['unit'][0] * 1e3:.1f} / {preset['unit'][1] * 1e3:.1f} ms; the spread is the machine's load.",
             "",
             "(a) SGD step at the authors' settings (momentum 0.9, Nesterov, weight decay 5e-4; now the "
             f"preset's): **{ref_step:.2f}** plain steps (timed between two plain-step timings).", "",
             f"(b) One candidate at the diabetes-mlp-ref settings ({cand['meta_steps']} meta steps, "
             f"{cand['steps']} fitness steps), in-process, one thread, median of {cand['n']} runs ({len(CANDIDATES)} "
             "candidates, each part timed against plain steps right before and after it); "
             f"the plan is built once per shard ({cand['shard_size']} candidates: population 10 on 2 shards) and "
             f"stored {cand['stored']} of {cand['meta_steps']} initial networks; local-search weights and "
             "curves checked bitwise equal with and without it:", "",
             md_table(["part", "plain-step units", "ratio"], [
                 ["local search, no plan (network re-initialised per meta step)", f"{cand['alone']:,.0f}", "1.00"],
                 ["local search with the shared plan", f"{cand['shared']:,.0f}", f"{cand['shared'] / cand['alone']:.2f}"],
                 ["building the plan (once per shard)", f"{cand['plan']:,.0f}", f"{cand['plan'] / cand['alone']:.2f}"],
                 ["fitness (partial training)", f"{cand['fitness']:,.0f}", f"{cand['fitness'] / cand['alone']:.2f}"],
                 ["**candidate, no plan**", f"{cand['per_alone']:,.0f}", "1.00"],
                 ["**candidate with the plan** (plan / shard size included)", f"{cand['per_shared']:,.0f}",
                  f"{cand['per_shared'] / cand['per_alone']:.2f}"]]), "",
             f"Candidates per core-minute, in units of {unit * 1e3:.1f} ms (this run's median plain step): "
             f"{cpm(cand['per_alone'] * unit):.1f} without the plan, {cpm(cand['per_shared'] * unit):.1f} with it "
             f"(**{cand['per_alone'] / cand['per_shared']:.2f}x**).", "",
             f"(c) The preset search (`config/experiments/diabetes-mlp-ref.yaml`, {preset['generations']} "
             f"generations, search only, `snakemake --cores 2`, 2 shards, device cpu): rc {preset['rc']}, "
             f"{preset['candidates']} candidates, {preset['evaluated']} fully evaluated.", "",
             md_table(["figure", "plain-step units", "with the unit before / after", "reference (3,000) / evomal",
                       "range"], [
                 pu_row("per generation, wall (start-up included)", per_gen),
                 pu_row("per generation, wall - start-up", per_gen_ns),
                 pu_row("per generation, compute of its jobs (core-seconds / 2 cores)", preset["compute"] / g / 2),
                 pu_row("per fully evaluated candidate, compute (core-seconds)",
                        preset["compute"] / max(preset["evaluated"], 1), versus=False)]), "",
             "Start-up: `snakemake -n` on the finished search, medians, interleaved"
             + (f" with the tree of `{st['baseline']}` (before this round)" if st.get("baseline") else "") + ":", "",
             md_table(["tree", "seconds", "units (1 thread)", "ratio", "heavy modules imported by the parse"],
                      [[label, f"{sec[label]:.2f}", u(sec[label]), f"{sec[label] / sec['now']:.2f}",
                        ", ".join(st["heavy"][label]) or "none"] for label in ("now", "baseline") if label in sec]
                      + [["`python -c 'import torch'`", f"{preset['import_torch']:.2f}", u(preset["import_torch"]),
                          f"{preset['import_torch'] / sec['now']:.2f}", ""]]), "",
             "pandas is Snakemake's own: its params check imports pandas whenever it is installed.", "",
             "(d) Early stopping (`early_stop: {enabled: true}`: median rule, checkpoints 25% and 50%, "
             "min_scored 3) on three small searches (MLP [64, 64], 10 meta steps, 200 fitness steps, SGD 0.01 "
             "momentum 0.9, `snakemake --cores 2`, search only), against the same search with it off:", ""]
    rows = []
    for r in es:
        off, on = r["off"], r["on"]
        saved = 1 - on["trained"] / max(off["trained"], 1)
        same = "yes" if on["best"] == off["best"] else "no"
        rows.append([r["label"], f"{off['rc']}/{on['rc']}", f"{off['evaluated']} / {on['evaluated']}", on["stopped"],
                     f"{off['trained']:,} / {on['trained']:,}", f"**{saved:.0%}**",
                     f"{on['fitness_s'] / max(off['fitness_s'], 1e-9):.2f}",
                     f"{on['wall'] / max(off['wall'], 1e-9):.2f}", same,
                     f"`{off['best']}` ({float(off['best_fitness']):.4g}) / `{on['best']}` "
                     f"({float(on['best_fitness']):.4g})"])
    lines += [md_table(["search", "rc off/on", "evaluated off / on", "stopped", "fitness steps trained off / on",
                        "fitness steps saved", "fitness seconds on / off", "wall on / off", "same best loss",
                        "best off / on (fitness)"],
                       rows), "",
              "Reading: early stopping saves fitness-training steps only; local search and filters cost the "
              "same. Stopped candidates get fitness inf, so later generations can breed differently from the "
              "run with it off (the 'same best loss' column shows whether that changed the result).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/evomal-bench/throughput")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller searches")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--reuse", action="store_true", help="re-render the section from the last run's measurements")
    p.add_argument("--baseline", default="5041d4a",
                   help="git revision whose `snakemake -n` start-up is measured beside this tree's ('' skips it); "
                        "default: the tree before this round")
    args = p.parse_args(argv)
    args.command = "python bench/bench_throughput.py" + (" --quick" if args.quick else "")
    if args.baseline != "5041d4a":
        args.command += f" --baseline '{args.baseline}'"
    workdir = Path(args.workdir)
    saved = workdir / "measurements.json"
    if args.reuse:
        section = render(args, **json.loads(saved.read_text()))
        print(section, flush=True)
        if not args.no_write:
            write_section(DOC, TITLE, section)
        return
    task = load_task("diabetes", seed=0)
    exp = resolve_config(yaml.safe_load(PRESET.read_text()))["experiments"]["diabetes-mlp-ref"]
    reps, n = (3, 10) if args.quick else (7, 20)
    torch.set_num_threads(1)  # every job of the workflow runs on one thread
    units = {"1": []}

    def measure_units():
        units["1"].append(step_seconds(task, repeats=reps, steps=n))

    measure_units()
    ref_step = step_seconds(task, repeats=reps, steps=n, momentum=0.9, nesterov=True, weight_decay=5e-4)
    ref_step /= statistics.median([units["1"][0], step_seconds(task, repeats=reps, steps=n)])  # in units
    cand = candidate_costs(task, exp, shard_size=5, unit=lambda: step_seconds(task, repeats=1, steps=n),
                           rounds=1 if args.quick else 2)
    preset = preset_search(workdir, repeats=3 if args.quick else 5, baseline=args.baseline,
                           unit=lambda: step_seconds(task, repeats=reps, steps=n))
    es = early_stopping(workdir, args.quick)
    measure_units()
    units["note"] = snakemake_env_note()
    measured = {"units": units, "ref_step": ref_step, "cand": cand, "preset": preset, "es": es}
    saved.write_text(json.dumps(measured))
    section = render(args, **measured)
    print(section, flush=True)
    if not args.no_write:
        write_section(DOC, TITLE, section)
        print(f"[{TITLE}] written to {DOC}", flush=True)


if __name__ == "__main__":
    main()
