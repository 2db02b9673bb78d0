"""Pipeline benchmarks: what the whole Snakemake workflow costs, end to end.

    python bench/bench_pipeline.py overhead      # default experiment: wall x cores / recorded compute seconds
    python bench/bench_pipeline.py throughput    # candidates fully evaluated per core-minute (digits, diabetes)
    python bench/bench_pipeline.py filters       # share of candidates each filter spared, 10 generations;
                                                 # then both rejection measures on its distinct expressions
    python bench/bench_pipeline.py scaling       # seconds per generation: population 12/25/50, shards 1/2
    python bench/bench_pipeline.py reference     # diabetes-mlp-ref preset against the authors' timing
    python bench/bench_pipeline.py all           # all of the above, in sequence
    python bench/bench_pipeline.py throughput --device cuda    # the same on a GPU

Every run is a real `snakemake --cores N` (the workflow's default profile: in-process jobs) in a scratch
folder (--workdir), never in the repository's results/. Compute seconds come from the files every job
writes (`<gen or exp dir>/timings/<stage>.json`, evomal.core.files.record_seconds; the tracking jobs' own
`seconds` in gen_<g>/tracked.json and tracking/results.json). Each subcommand prints a markdown table and
replaces its own section of docs/benchmarks.md (with the command that produced it); --no-write skips that.
"""
from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
SNAKEMAKE = REPO / ".venv" / "bin" / "snakemake"
PYTHON = REPO / ".venv" / "bin" / "python"


# --------------------------------------------------------------------------- helpers (also used by bench_quality)
def write_yaml(path: Path, doc: dict) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_snakemake(workdir: Path, configfile: str, *, cores: int = 2, targets=(), extra=()) -> tuple[float, int]:
    """`snakemake -s Snakefile --configfile ... --cores N` in ``workdir`` (the default profile applies):
    wall seconds of the whole command (start-up included) and its exit code. Log: workdir/snakemake.log."""
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--configfile", configfile, "--cores", str(cores),
           *extra, *targets]
    t0 = time.perf_counter()
    with open(Path(workdir) / "snakemake.log", "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - t0, rc


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def fmt(x, digits: int = 4) -> str:
    if x is None or x == "":
        return ""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the section '## <title>' (up to the next '## ') of ``path``, or append it; keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## " + re.escape(title) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    tmp.replace(path)


def snakemake_env_note() -> str:
    import platform

    try:
        load = os.getloadavg()
        load_s = f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at the end"
    except OSError:
        load_s = "load unknown"
    return f"{platform.node() or 'host'}, {os.cpu_count()} CPUs, {load_s}"


# --------------------------------------------------------------------------- reading a finished run
def job_seconds(results: Path) -> list[tuple[str, str, float]]:
    """(experiment-relative folder, stage, seconds) of every job that recorded its compute seconds."""
    import json

    out = []
    for path in sorted(results.rglob("timings/*.json")):
        doc = json.loads(path.read_text())
        out.append((str(path.parent.parent.relative_to(results)), doc.get("stage", path.stem), float(doc["seconds"])))
    for name, stage in (("tracked.json", "track"), ("results.json", "track_results")):
        for path in sorted(results.rglob(name)):
            doc = json.loads(path.read_text())
            if "seconds" in doc:
                out.append((str(path.parent.relative_to(results)), stage, float(doc["seconds"])))
    return out


def stage_kind(stage: str) -> str:
    kind = re.sub(r"_\d+$", "", stage)  # compile_0 -> compile
    return "plots" if kind.startswith("plot_") else kind


def rule_counts(log_path: Path) -> dict[str, int]:
    """Jobs per rule that Snakemake started (from its log)."""
    counts: dict[str, int] = {}
    for line in Path(log_path).read_text().splitlines():
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line.strip())
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def generations_of(results: Path, exp: str) -> list[Path]:
    return sorted((results / exp).glob("gen_*"), key=lambda p: int(p.name.split("_")[1]))


def decisions(gen_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in read_tsv(gen_dir / "fitness.tsv"):
        counts[r["decision"]] = counts.get(r["decision"], 0) + 1
    return counts


def gen_compute(gen_dir: Path) -> float:
    import json

    return sum(float(json.loads(p.read_text())["seconds"]) for p in (gen_dir / "timings").glob("*.json"))


def critical_path(secs: list[tuple[str, str, float]]) -> float:
    """Approximate longest chain of dependent jobs: per generation population -> filter -> slowest compile
    shard -> slowest optimize shard -> slowest evaluate shard -> gather; then the slower of meta_test and
    transfer, the slowest job after it (plots, track_results), and the report. Tracking of generations
    and the start-up plots run beside the search and are left off."""
    by_gen: dict[str, dict[str, float]] = {}
    rest: dict[str, float] = {}
    for folder, stage, s in secs:
        kind = stage_kind(stage)
        if re.search(r"gen_\d+$", folder) and kind in ("population", "filter", "compile", "optimize", "evaluate",
                                                       "gather"):
            d = by_gen.setdefault(folder, {})
            d[kind] = max(d.get(kind, 0.0), s) if kind in ("compile", "optimize", "evaluate") else d.get(kind, 0) + s
        else:
            rest[stage] = max(rest.get(stage, 0.0), s)
    cp = sum(sum(d.values()) for d in by_gen.values())
    cp += max(rest.get("meta_test", 0.0), rest.get("transfer", 0.0))
    after = [v for k, v in rest.items() if k.startswith("plot_") and "curves" in k] + [rest.get("track_results", 0.0)]
    cp += max(after or [0.0]) + rest.get("report", 0.0)
    return cp


def experiment_config(base: dict, **over) -> dict:
    import copy

    exp = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict):
            exp.setdefault(key, {}).update(value)
        else:
            exp[key] = value
    return exp


def one_experiment_config(name: str, exp: dict, *, shards: int = 2, device: str = "auto") -> dict:
    return {"run": [name], "results_dir": "results", "tracking_uri": "sqlite:///results/mlflow.db",
            "device": device, "shards": shards, "experiments": {name: exp}}


def fresh(workdir: Path) -> Path:
    import shutil

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    return workdir


def startup_seconds(workdir: Path, configfile: str, cores: int) -> float:
    """Wall seconds of `snakemake -n` on the finished run (imports, config validation, DAG, nothing to do)."""
    wall, _ = run_snakemake(workdir, configfile, cores=cores, extra=["-n", "-q"])
    return wall


# --------------------------------------------------------------------------- overhead
def bench_overhead(args) -> str:
    import json

    import yaml

    wdir = Path(args.workdir) / "overhead"
    if args.reuse and (wdir / "run.json").exists():  # re-render the tables of the last run
        wall, rc, startup = (json.loads((wdir / "run.json").read_text())[k] for k in ("wall", "rc", "startup"))
        env = json.loads((wdir / "run.json").read_text()).get("env") or snakemake_env_note()
    else:
        fresh(wdir)
        cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        cfg["device"] = args.device
        write_yaml(wdir / "config.yaml", cfg)
        wall, rc = run_snakemake(wdir, "config.yaml", cores=args.cores)
        startup = startup_seconds(wdir, "config.yaml", args.cores)
        env = snakemake_env_note()
        (wdir / "run.json").write_text(json.dumps({"wall": wall, "rc": rc, "startup": startup, "env": env}))
    results = wdir / "results"
    secs = job_seconds(results)
    total = sum(s for _, _, s in secs)
    counts = rule_counts(wdir / "snakemake.log")
    counts.pop("all", None)
    by_kind: dict[str, list[float]] = {}
    for _, stage, s in secs:
        by_kind.setdefault(stage_kind(stage), []).append(s)
    rule_kind = {"plot_search": "plots", "plot_loss_shape": "plots", "plot_meta_test_curves": "plots",
                 "plot_transfer_curves": "plots", "track_results": "track_results"}
    recorded_rules = set(by_kind)
    unrecorded = {r: n for r, n in counts.items() if rule_kind.get(r, r) not in recorded_rules}
    ratio = wall * args.cores / total if total else float("nan")
    cp = critical_path(secs)
    ideal = startup + max(cp, total / args.cores)
    rows = [[k, len(v), f"{sum(v):.2f}", f"{100 * sum(v) / total:.1f}%", f"{max(v):.2f}"]
            for k, v in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))]
    rows.append(["**total**", sum(len(v) for v in by_kind.values()), f"**{total:.2f}**", "100%", ""])
    lines = ["## Pipeline overhead", "", f"`{args.command}`", "",
             f"The default experiment (config/config.yaml: digits, MLP [100, 100], population 12 x 4 generations, "
             f"50 meta steps, 300 fitness steps, meta-test 2000 steps x 5 seeds, one transfer target, MLflow "
             f"tracking, report) end to end with `snakemake --cores {args.cores}` (default profile, in-process jobs), "
             f"device {args.device}. Machine shared with other engineers' test runs while measured "
             f"({env}): absolute seconds are inflated and noisy, the ratios are within one run.",
             "", md_table(["quantity", "value"], [
                 ["snakemake exit code", rc],
                 ["wall seconds (whole command, start-up included)", f"{wall:.1f}"],
                 ["jobs run / jobs recording compute seconds", f"{sum(counts.values())} / "
                  f"{sum(len(v) for v in by_kind.values())}"],
                 ["jobs without a timing file", ", ".join(f"{r} x{n}" for r, n in sorted(unrecorded.items())) or "none"],
                 ["total compute seconds (sum over jobs)", f"{total:.1f}"],
                 [f"**wall x {args.cores} cores / compute** (target <= 1.15)", f"**{ratio:.2f}**"],
                 ["start-up: `snakemake -n` on the finished run (imports, validation, DAG)", f"{startup:.1f}"],
                 ["critical path of recorded compute (approx., see bench_pipeline.critical_path)", f"{cp:.1f}"],
                 [f"best possible wall = start-up + max(critical path, compute / {args.cores})", f"{ideal:.1f}"],
                 [f"best possible ratio on this DAG ({args.cores} cores)", f"{ideal * args.cores / total:.2f}"],
             ]), "", "Compute seconds per stage kind:", "",
             md_table(["stage kind", "jobs", "seconds", "share", "slowest job"], rows), ""]
    lines += overhead_explanation(ratio, wall, total, startup, cp, args.cores, unrecorded)
    return "\n".join(lines)


def overhead_explanation(ratio, wall, total, startup, cp, cores, unrecorded) -> list[str]:
    idle = wall * cores - total
    start_share = startup * cores / idle if idle > 0 else 0
    serial = max(0.0, cp - total / cores) * cores
    gap = cp - total / cores
    out = [f"Where the {idle:.1f} idle core-seconds (wall x cores - compute) go:",
           f"- Snakemake start-up (one process: `import torch`, MLflow, config validation, DAG of the whole "
           f"search): {startup:.1f} s wall = {startup * cores:.1f} core-seconds ({100 * start_share:.0f}% of "
           "the idle time) in which no job can run.",
           (f"- Serial stretches of the DAG: the critical path is {cp:.1f} s against compute / cores = "
            f"{total / cores:.1f} s: even with free start-up and scheduling the wall could not drop below "
            f"{cp:.1f} s, so about {serial:.1f} core-seconds of waiting are structural (population, filter and "
            "gather of each generation are one job each; the slower shard of each per-candidate stage holds "
            "the other core; meta-test and transfer are one job each). Tracking jobs fill some of those gaps, "
            "so this is an upper bound." if gap > 0 else
            f"- Serial stretches of the DAG: the critical path ({cp:.1f} s) is no longer than compute / cores "
            f"({total / cores:.1f} s), so the dependencies alone would not bound the wall at this size: "
            "tracking jobs and the other shard can fill the serial stages (population, filter, gather, and "
            "the single-job meta-test / transfer). In practice the filter job (SymPy canonical forms and the "
            "rejection protocol, one job per generation) and the gaps between dependent jobs leave a core "
            "idle now and then, which is part of the remainder below."),
           "- The rest: Snakemake's scheduling between jobs (about 20 ms each, DESIGN 3.1), in-process job "
           "dispatch, and the jobs that write no timing file (" +
           (", ".join(sorted(unrecorded)) or "none") + "; each takes milliseconds, they read and write a "
           "small file), counted here as overhead."]
    if ratio > 1.15:
        out.append(f"- The target (<= 1.15) is missed at this size: the run computes for only {total:.0f} core-seconds, "
                   "so the fixed start-up and the per-generation serial stages weigh heavily. They do not grow "
                   "with the per-candidate work, so the ratio falls as candidates get dearer (see the "
                   "throughput and reference sections).")
    return out + [""]


# --------------------------------------------------------------------------- throughput
def reference_candidate_exp(dataset: str, hidden: list[int]) -> dict:
    return {"method": "evomal", "seed": 0, "dataset": dataset, "model": {"name": "mlp", "hidden": hidden},
            "search": {"population": 25, "generations": 1},
            "local_search": {"meta_steps": 250, "meta_lr": 0.001, "inner_steps": 1},
            "training": {"steps": 500, "lr": 0.01, "batch_size": 128},
            "filters": {"rejection_steps": 100, "rejection_samples": 100},
            "meta_test": {"steps": 10, "seeds": [0], "eval_every": 10}}


def search_run(wdir: Path, name: str, exp: dict, args, *, shards: int | None = None) -> dict:
    """Run only the search of one experiment (target: the last generation's fitness.tsv)."""
    gens = exp["search"]["generations"]
    write_yaml(wdir / "config.yaml", one_experiment_config(name, exp, shards=shards or args.shards,
                                                          device=args.device))
    target = f"results/{name}/gen_{gens - 1}/fitness.tsv"
    import json

    saved = wdir / "run.json"
    if getattr(args, "reuse", False) and saved.exists():  # re-render the tables of the last run
        wall, rc = (json.loads(saved.read_text())[k] for k in ("wall", "rc"))
    else:
        wall, rc = run_snakemake(wdir, "config.yaml", cores=args.cores, targets=[target])
        saved.write_text(json.dumps({"wall": wall, "rc": rc, "env": snakemake_env_note()}))
    results = wdir / "results"
    gdirs = generations_of(results, name)
    evaluated = sum(decisions(g).get("evaluate", 0) for g in gdirs)
    candidates = sum(sum(decisions(g).values()) for g in gdirs)
    compute = sum(gen_compute(g) for g in gdirs)
    per_cand = []
    for g in gdirs:
        for f in (g / "candidates").glob("*/fitness.json"):
            t = json.loads(f.read_text()).get("timings", {})
            per_cand.append(sum(float(v) for v in t.values()))
    return {"wall": wall, "rc": rc, "evaluated": evaluated, "candidates": candidates, "compute": compute,
            "generations": len(gdirs), "per_candidate": per_cand, "gdirs": gdirs}


def bench_throughput(args) -> str:
    rows = []
    for dataset in ("digits", "diabetes"):
        import json

        wdir = Path(args.workdir) / f"throughput-{dataset}"
        reuse = args.reuse and (wdir / "run.json").exists()
        if not reuse:
            fresh(wdir)
        r = search_run(wdir, f"tp-{dataset}", reference_candidate_exp(dataset, args.hidden), args)
        if reuse and "startup" in json.loads((wdir / "run.json").read_text()):
            startup = json.loads((wdir / "run.json").read_text())["startup"]
        else:
            startup = startup_seconds(wdir, "config.yaml", args.cores)
            (wdir / "run.json").write_text(json.dumps({**json.loads((wdir / "run.json").read_text()),
                                                       "startup": startup}))
        core_min_wall = r["wall"] * args.cores / 60
        core_min_compute = r["compute"] / 60
        cand_mean = sum(r["per_candidate"]) / len(r["per_candidate"]) if r["per_candidate"] else float("nan")
        rows.append([dataset, r["rc"], r["candidates"], r["evaluated"], f"{r['wall']:.1f}", f"{startup:.1f}",
                     f"{r['compute']:.1f}", f"{cand_mean:.2f}",
                     f"**{r['evaluated'] / core_min_wall:.2f}**", f"{r['evaluated'] / core_min_compute:.2f}",
                     f"{r['wall'] * args.cores / r['compute']:.2f}"])
    hidden = ", ".join(map(str, args.hidden))
    import json

    env = json.loads((Path(args.workdir) / "throughput-diabetes" / "run.json").read_text()).get("env") \
        or snakemake_env_note()
    return "\n".join([
        "## Pipeline throughput", "", f"`{args.command}`", "",
        f"One generation at the reference per-candidate settings: population 25, 250 meta steps, 500 fitness "
        f"steps (SGD lr 0.01, batch 128), 100 rejection steps, MLP [{hidden}]; only the search runs "
        f"(target `results/<exp>/gen_0/fitness.tsv`; the meta-test is not built). `snakemake --cores "
        f"{args.cores}`, {args.shards} shards, device {args.device}. A candidate is *fully evaluated* when it went "
        "through local search and fitness (filter decision `evaluate`); the others were settled by the filters. "
        "Generation 0 is random, so the filters spare fewer candidates than in later generations. Machine "
        f"shared and loaded ({env}).", "",
        md_table(["dataset", "rc", "candidates", "fully evaluated", "wall s", "start-up s", "compute s",
                  "s per evaluated candidate (local search + fitness)", "**evaluated per core-minute (wall)**",
                  "evaluated per compute-minute", "wall x cores / compute"], rows), "",
        "Per core-minute (wall) = evaluated / (wall seconds x cores / 60), start-up included; per "
        "compute-minute uses the recorded compute seconds of the generation's jobs instead.", "",
        "Reading: at these settings the work is in the per-candidate stages, and wall x cores / compute is "
        "close to 1 (the pipeline keeps both cores busy). The seconds per evaluated candidate are what the "
        "learning engine costs on this machine *under its current load*: the Engine section measures the "
        "same candidate in-process on one thread, and a large gap between the two is the machine's load "
        "(two jobs plus other users' processes on two cores), not pipeline overhead - compare the figures "
        "only when both were measured on a quiet machine.", ""])


# --------------------------------------------------------------------------- filters
def bench_filters(args) -> str:
    exp = {"method": "evomal", "seed": 0, "dataset": "digits", "model": {"name": "mlp", "hidden": [100, 100]},
           "search": {"population": 16, "generations": args.generations},
           "local_search": {"meta_steps": 20}, "training": {"steps": 100, "lr": 0.01, "momentum": 0.9},
           "meta_test": {"steps": 10, "seeds": [0], "eval_every": 10}}
    wdir = Path(args.workdir) / "filters"
    if not (args.reuse and (wdir / "run.json").exists()):
        fresh(wdir)
    r = search_run(wdir, "filters-digits", exp, args)
    kinds = ["evaluate", "equivalent", "rejected", "gradient_equivalent", "invalid"]
    rows, tot = [], {k: 0 for k in kinds}
    for g in r["gdirs"]:
        d = decisions(g)
        n = sum(d.values())
        for k in kinds:
            tot[k] += d.get(k, 0)
        skipped = n - d.get("evaluate", 0)
        rows.append([g.name.split("_")[1], n] + [f"{d.get(k, 0)} ({100 * d.get(k, 0) / n:.0f}%)" for k in kinds[1:]]
                    + [f"{skipped} ({100 * skipped / n:.0f}%)", d.get("evaluate", 0)])
    n = sum(tot.values())
    skipped = n - tot["evaluate"]
    rows.append(["**total**", n] + [f"**{tot[k]} ({100 * tot[k] / n:.0f}%)**" for k in kinds[1:]]
                + [f"**{skipped} ({100 * skipped / n:.0f}%)**", tot["evaluate"]])
    return "\n".join([
        "## Pipeline filter savings", "", f"`{args.command}`", "",
        f"A {r['generations']}-generation search on digits (population 16, MLP [100, 100], 20 meta steps, 100 "
        f"fitness steps, filters at their defaults: symbolic equivalence, rejection protocol 100 steps on the error "
        f"rate, gradient "
        f"equivalence tolerance 0.01; elitism 1 per generation). Per generation, how many candidates skipped "
        f"local search and fitness, and which filter decided (an `equivalent` / `gradient_equivalent` "
        f"candidate reuses an archived fitness, a `rejected` one gets +inf). snakemake rc {r['rc']}, "
        f"{r['wall']:.0f} s wall.", "",
        md_table(["gen", "candidates", "equivalent", "rejected", "gradient_equivalent", "invalid", "skipped",
                  "evaluated"], rows), "", *rejection_measure_lines(wdir, r["gdirs"])])


def rejection_measure_lines(wdir: Path, gdirs) -> list[str]:
    """The search's distinct expressions under both rejection measures (bench/rejection_measures.py)."""
    import json

    import yaml

    from evomal.pipeline.config import resolve_config
    from rejection_measures import compare, section_lines

    exp = next(iter(resolve_config(yaml.safe_load((wdir / "config.yaml").read_text()))["experiments"].values()))
    expressions = sorted({i["expression"] for g in gdirs
                          for i in json.loads((g / "population.json").read_text())["individuals"]})
    return section_lines(compare(expressions, exp), md_table)


# --------------------------------------------------------------------------- scaling
def bench_scaling(args) -> str:
    base = {"method": "evomal", "seed": 0, "dataset": "digits", "model": {"name": "mlp", "hidden": [100, 100]},
            "search": {"population": 25, "generations": 2},
            "local_search": {"meta_steps": 20}, "training": {"steps": 100, "lr": 0.01, "momentum": 0.9},
            "meta_test": {"steps": 10, "seeds": [0], "eval_every": 10}}
    rows = []
    for pop, shards in ((12, 2), (25, 2), (50, 2), (25, 1)):
        exp = experiment_config(base, search={"population": pop})
        wdir = fresh(Path(args.workdir) / f"scaling-p{pop}-s{shards}")
        r = search_run(wdir, f"scale-p{pop}", exp, args, shards=shards)
        startup = startup_seconds(wdir, "config.yaml", args.cores)
        g = r["generations"]
        rows.append([pop, shards, r["rc"], r["evaluated"], f"{r['wall']:.1f}", f"{startup:.1f}",
                     f"**{(r['wall'] - startup) / g:.1f}**", f"{r['compute'] / g:.1f}",
                     f"{(r['wall'] - startup) / max(r['evaluated'], 1):.2f}",
                     f"{(r['wall'] - startup) * args.cores / r['compute']:.2f}"])
    return "\n".join([
        "## Pipeline scaling", "", f"`{args.command}`", "",
        "Digits, MLP [100, 100], 20 meta steps, 100 fitness steps (small per-candidate work, so that it fits), "
        f"2 generations, `snakemake --cores {args.cores}`. Seconds per generation = (wall - start-up) / "
        "generations, start-up = `snakemake -n` on the finished run. Machine shared and loaded "
        f"({snakemake_env_note()}).", "",
        md_table(["population", "shards", "rc", "evaluated (both gens)", "wall s", "start-up s",
                  "**s per generation**", "compute s per generation", "s per evaluated candidate",
                  "(wall - start-up) x cores / compute"], rows), "",
        "Reading: with these tiny per-candidate settings a generation computes for a few seconds, so its serial "
        "parts weigh heavily: the filter job (SymPy canonical forms, rejection protocol) runs alone, and a "
        "generation is a chain of six dependent jobs (population -> filter -> compile -> optimize -> evaluate "
        "-> gather), each scheduled only when the previous one finished. The last column (2 = one core busy on "
        "average) shows how far a generation is from keeping both cores busy. How the seconds grow with the "
        "population depends on how many candidates the filters let through (column `evaluated`); the two "
        "rows with population 25 compare one shard (one core for the per-candidate stages) with two.", ""])


# --------------------------------------------------------------------------- reference
REF_PER_CANDIDATE = 2.28
REF_PER_GENERATION = 20.1


def bench_reference(args) -> str:
    import yaml

    preset = yaml.safe_load((REPO / "config" / "experiments" / "diabetes-mlp-ref.yaml").read_text())
    name = preset["run"][0]
    exp = preset["experiments"][name]
    import json

    wdir = Path(args.workdir) / "reference"
    reuse = args.reuse and (wdir / "run.json").exists()
    if not reuse:
        fresh(wdir)
    r = search_run(wdir, name, exp, args)
    saved = json.loads((wdir / "run.json").read_text())
    if reuse and "startup" in saved:
        startup = saved["startup"]
    else:
        startup = startup_seconds(wdir, "config.yaml", args.cores)
        (wdir / "run.json").write_text(json.dumps({**saved, "startup": startup}))
    gen_rows = []
    for gd in r["gdirs"]:
        d = decisions(gd)
        ts = [json.loads(f.read_text()).get("timings", {}) for f in (gd / "candidates").glob("*/fitness.json")]
        ls = [float(t.get("local_search", 0)) for t in ts]
        fi = [float(t.get("fitness", 0)) for t in ts]
        gen_rows.append([gd.name.split("_")[1], sum(d.values()), d.get("evaluate", 0), f"{gen_compute(gd):.1f}",
                         f"{sum(ls) / len(ls):.2f}" if ls else "", f"{sum(fi) / len(fi):.2f}" if fi else ""])
    g, ev = r["generations"], max(r["evaluated"], 1)
    per_gen, per_cand = r["wall"] / g, r["wall"] / ev
    per_gen_ns, per_cand_ns = (r["wall"] - startup) / g, (r["wall"] - startup) / ev
    rows = [["seconds per generation", f"{REF_PER_GENERATION:.1f}", f"{per_gen:.2f}",
             f"**{REF_PER_GENERATION / per_gen:.1f}x**", f"{per_gen_ns:.2f}", f"{REF_PER_GENERATION / per_gen_ns:.1f}x"],
            ["seconds per evaluated candidate", f"{REF_PER_CANDIDATE:.2f}", f"{per_cand:.2f}",
             f"**{REF_PER_CANDIDATE / per_cand:.1f}x**", f"{per_cand_ns:.2f}", f"{REF_PER_CANDIDATE / per_cand_ns:.1f}x"]]
    tail = ["", "Per generation (compute seconds of the generation's jobs; mean seconds of one candidate's local "
            "search (50 meta steps) and fitness (200 steps) from its fitness.json):", "",
            md_table(["gen", "candidates", "fully evaluated", "compute s", "local search s", "fitness s"], gen_rows),
            "", "Reading: the filters leave few candidates to evaluate per generation (rejection, symbolic and "
            "gradient equivalence), which is where the per-generation time is won; the cost of one evaluated "
            "candidate is what the learning engine and the machine's load make it (see the Engine section for "
            "the same work measured in-process on one thread). A generation with one candidate to evaluate "
            "runs it on one shard, so one core idles.", ""]
    return "\n".join([
        "## Pipeline against the reference implementation", "", f"`{args.command}`", "",
        "The preset `config/experiments/diabetes-mlp-ref.yaml` (diabetes, MLP 10-1000-1000-1, batch 128, "
        "population 10 x 5 generations, 50 meta / 200 fitness / 100 rejection steps), search only (target: "
        f"the last generation's fitness.tsv), `snakemake --cores {args.cores}`, device {args.device}. "
        f"snakemake rc {r['rc']}; {r['candidates']} candidates, {r['evaluated']} fully evaluated, "
        f"{r['wall']:.1f} s wall (start-up {startup:.1f} s), {r['compute']:.1f} compute seconds.", "",
        "**The reference figures were measured separately** (the authors' code on this kind of machine, not "
        "in the same run and not under the same load); this run shared the machine with other engineers' "
        f"tests ({saved.get('env') or snakemake_env_note()}). Goal: search at least 5x faster.", "",
        md_table(["figure", "reference", "evomal (wall, start-up included)", "speed-up",
                  "evomal (wall - start-up)", "speed-up"], rows), *tail])


# --------------------------------------------------------------------------- GPU note
def gpu_section(args) -> str:
    return "\n".join([
        "## Pipeline on a GPU", "",
        "Pending: no accelerator was lent to the session that wrote these benchmarks. On a machine with a "
        "CUDA build of torch in `.venv`, one command measures the throughput (same settings as above, every "
        "job on the GPU) and replaces the throughput section:", "",
        "```bash", "python bench/bench_pipeline.py throughput --device cuda", "```", ""])


SECTIONS = {"overhead": ("Pipeline overhead", bench_overhead),
            "throughput": ("Pipeline throughput", bench_throughput),
            "filters": ("Pipeline filter savings", bench_filters),
            "scaling": ("Pipeline scaling", bench_scaling),
            "reference": ("Pipeline against the reference implementation", bench_reference),
            "gpu-note": ("Pipeline on a GPU", gpu_section)}


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="+", choices=[*SECTIONS, "all"])
    p.add_argument("--workdir", default="/tmp/evomal-bench/pipeline", help="scratch folder (emptied per run)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--shards", type=int, default=2, help="shards of throughput / filters / reference runs")
    p.add_argument("--device", default="auto", help="config `device` of every run: auto, cpu, cuda, cuda:N")
    p.add_argument("--hidden", default="1000,1000", help="MLP hidden sizes of the throughput runs")
    p.add_argument("--generations", type=int, default=10, help="generations of the filter-savings search")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--note", default="", help="a paragraph added to the section(s) written")
    p.add_argument("--reuse", action="store_true",
                   help="overhead, throughput, filters, reference: re-render the tables of the last run in --workdir "
                        "(no snakemake)")
    args = p.parse_args(argv)
    args.hidden = [int(h) for h in args.hidden.split(",") if h]
    what = [w for w in SECTIONS if w != "gpu-note"] if "all" in args.what else args.what
    for w in what:
        title, fn = SECTIONS[w]
        rest = [a for a in (sys.argv[1:] if argv is None else argv)
                if a not in SECTIONS and a not in ("all", "--reuse")]
        if "--note" in rest:
            i = rest.index("--note")
            del rest[i:i + 2]
        args.command = "python bench/bench_pipeline.py " + " ".join([w, *rest])
        section = fn(args)
        if args.note:
            section = section.rstrip("\n") + "\n\n" + args.note + "\n"
        print(section, flush=True)
        if not args.no_write:
            write_section(DOC, title, section)
            print(f"[{title}] written to {DOC}", flush=True)


if __name__ == "__main__":
    main()
