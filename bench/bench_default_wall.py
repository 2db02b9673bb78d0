"""Wall time of the default experiment, this tree against an earlier commit, in one run.

    python bench/bench_default_wall.py                  # writes "Default experiment wall time" in docs/benchmarks.md
    python bench/bench_default_wall.py --seeds 0-9      # the default config's own ten meta-test seeds
    python bench/bench_default_wall.py --no-write

Every variant runs `snakemake --cores 2` on config/config.yaml (meta-test seeds set by --seeds; 0-4 are
the settings before round 3 raised them to ten) in an empty folder, one after another, with the
repeats interleaved so that load on a shared machine falls on all of them alike. The earlier tree is
checked out with `git worktree` and imported instead of the installed package (a sitecustomize drops the
editable install's finder). Variants: the earlier tree with `batching: off` (the one-by-one path of
round 2) and with its defaults; this tree with its defaults, with `job_processes: false` and with
Snakemake's ILP scheduler. It prints each variant's wall time and its ratio to the first, wall x cores /
compute (compute: the seconds the jobs record in timings/), CPU / (wall x cores) (CPU: the user and
system time of every process of the run), and whether meta_test.tsv and transfer.tsv are byte for byte
those of the earlier tree with the same batching.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DOC, REPO, SNAKEMAKE, md_table, write_section  # noqa: E402

TITLE = "Default experiment wall time"
SITE = '''import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
'''


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def _config(path: Path, seeds: list[int]) -> Path:
    text = (REPO / "config" / "config.yaml").read_text()
    text, n = re.subn(r"seeds: \[0(, \d+)*\]", f"seeds: [{', '.join(map(str, seeds))}]", text, count=1)
    if n != 1:
        raise SystemExit("config/config.yaml: no meta_test seeds list to replace")
    path.write_text(text)
    return path


def _old_tree(commit: str, root: Path) -> tuple[Path, dict]:
    tree, site = root / f"tree-{commit}", root / "site"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-f", "--detach", str(tree), commit],
                       check=True, capture_output=True)
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    return tree, {"PYTHONPATH": f"{site}:{tree}"}


def _idle(jobs: list[tuple[float, float]], start: float, end: float, cores: int = 2) -> dict:
    """Core-seconds with no job at work: before the first job (start-up), between the first job's start
    and the last one's end, and after it (the end of the run); ``jobs`` are (start, end) wall times."""
    if not jobs:
        return {}
    first, last = min(a for a, _ in jobs), max(b for _, b in jobs)
    events = sorted([(a, 1) for a, _ in jobs] + [(b, -1) for _, b in jobs])
    busy, at, inside = 0, first, 0.0
    for t, step in events:
        inside += max(0, cores - busy) * (t - at)
        busy, at = busy + step, t
    return {"start-up": cores * (first - start), "between": inside, "end": cores * (end - last)}


def _run(snakefile: Path, env: dict, config: Path, workdir: Path, extra: list[str]) -> dict:
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    workdir.mkdir(parents=True)
    start = time.time()
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(snakefile), "--configfile", str(config), "--cores", "2", *extra],
                          cwd=workdir, capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # every process of the run (Snakemake, its workers, the solver it starts) is waited for, so its CPU
    # time lands here: busy cores by any work, where compute counts only what the jobs time
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    exp = next((workdir / "results").glob("*/meta_test.tsv")).parent if proc.returncode == 0 else None
    end = time.time()
    timings = [json.loads(p.read_text()) for p in (workdir / "results").rglob("timings/*.json")]
    compute = sum(t["seconds"] for t in timings)
    # trees before the timings carried their end time give no layout
    idle = _idle([(t["end"] - t["seconds"], t["end"]) for t in timings if "end" in t], start, end)
    tables = {n: (exp / n).read_bytes() for n in ("meta_test.tsv", "transfer.tsv")} if exp else {}
    return {"rc": proc.returncode, "wall": wall, "compute": compute, "cpu": cpu, "tables": tables, "idle": idle,
            "tail": (proc.stdout + proc.stderr)[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="4bfb0a9", help="the earlier commit (default: the end of round 3's first part)")
    ap.add_argument("--seeds", default="0-4", help="meta-test seeds, e.g. 0-4 or 0,1,2")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/evomal-bench/default-wall")
    ap.add_argument("--variants", default="old-off,old,new,new-threads",
                    help="which to run, of old-off (the earlier tree, batching off), old (its defaults), new "
                         "(this tree), new-threads (this tree, job_processes false) and new-ilp (this tree with "
                         "Snakemake's ILP scheduler)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    seeds = _seeds(args.seeds)
    config = _config(root / "config.yaml", seeds)
    old, old_env = _old_tree(args.old, root)
    known = {
        "old-off": (f"{args.old}, batching off", old / "Snakefile", old_env, ["--config", "batching=off"], "off"),
        "old": (f"{args.old}, defaults", old / "Snakefile", old_env, [], "auto"),
        "new": ("this tree, defaults", REPO / "Snakefile", {}, [], "auto"),
        "new-threads": ("this tree, job_processes false", REPO / "Snakefile", {}, ["--config", "job_processes=false"],
                        "auto"),
        "new-ilp": ("this tree, ILP scheduler", REPO / "Snakefile", {}, ["--scheduler", "ilp"], "auto"),
    }
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(known))
    if unknown or not {"old-off", "old"} & set(chosen):
        raise SystemExit(f"--variants {args.variants}: unknown {unknown}, or no earlier tree (old-off, old) to "
                         f"compare with; known: {sorted(known)}")
    variants = [known[k] for k in chosen]
    subprocess.run([sys.executable, "-c", "from evomal.tasks.datasets import load_task; load_task('mnist1d', seed=0)"],
                   check=True)  # this tree's MNIST-1D cache is warm, as on any machine after its first run
    runs: dict[str, list[dict]] = {v[0]: [] for v in variants}
    for r in range(args.repeats):
        for i, (label, snakefile, env, extra, _) in enumerate(variants):
            out = _run(snakefile, env, config, root / f"v{i}", extra)
            if out["rc"] != 0:
                raise SystemExit(f"{label}: snakemake failed ({out['rc']}):\n{out['tail']}")
            runs[label].append(out)
            idle = ", ".join(f"{k} {v:.1f}" for k, v in out["idle"].items())
            print(f"repeat {r + 1}: {label}: {out['wall']:.1f} s, wall x 2 / compute "
                  f"{out['wall'] * 2 / out['compute']:.2f}, CPU / (wall x 2) {out['cpu'] / (out['wall'] * 2):.2f}"
                  + (f"; idle core-seconds: {idle}" if idle else ""),
                  flush=True)
    first = statistics.median(o["wall"] for o in runs[variants[0][0]])
    # the same repeat's runs follow one another, so their ratio cancels most of a shared machine's drift
    base = runs[variants[0][0]]
    paired = {label: statistics.median(o["wall"] / f["wall"] for o, f in zip(runs[label], base))
              for label, *_ in variants}
    reference = {b: runs[label][0]["tables"] for label, snakefile, _, _, b in variants
                 if snakefile != REPO / "Snakefile"}
    rows = []
    for label, _, _, _, batching in variants:
        wall = statistics.median(o["wall"] for o in runs[label])
        compute = statistics.median(o["compute"] for o in runs[label])
        busy = statistics.median(o["cpu"] / (o["wall"] * 2) for o in runs[label])
        same = batching in reference and all(o["tables"] == reference[batching] for o in runs[label])
        walls = ", ".join(f"{o['wall']:.0f}" for o in runs[label])
        idle = " / ".join(f"{statistics.median(o['idle'][k] for o in runs[label]):.1f}"
                          for k in ("start-up", "between", "end")) if runs[label][0]["idle"] else "-"
        rows.append([label, f"{wall:.0f} ({walls})", f"{wall / first:.2f}", f"{paired[label]:.2f}",
                     f"{wall * 2 / compute:.2f}", f"{busy:.2f}", idle, "yes" if same else "**no**"])
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    text = "\n".join([
        f"## {TITLE}", "", f"`python bench/bench_default_wall.py --old {args.old} --seeds {args.seeds} "
        f"--repeats {args.repeats} --variants {args.variants}`", "",
        f"config/config.yaml with meta-test seeds {seeds}, `snakemake --cores 2` (default profile) in an empty "
        f"folder, {args.repeats} repeat(s) interleaved, median wall; load average at the end {load} (1/5/15 min). "
        "Compute is the seconds the jobs record in `timings/` (threads of one process count the time they "
        "wait for the interpreter lock too). CPU is the user and system time of every process of the run "
        "(Snakemake, its workers, the solvers it starts): CPU / (wall x 2) is how busy the two cores were with "
        "any work, bookkeeping and imports included. Idle core-seconds (this tree's timings carry each job's end): "
        "before the first job starts, between the first job's start and the last one's end, and after it "
        "until the process exits. Same tables: meta_test.tsv and transfer.tsv byte for byte those "
        f"of {args.old} with the same batching.", "",
        md_table(["variant", "wall (s): median (each repeat)", "ratio of medians", "median of the repeats' ratios",
                  "wall x 2 cores / compute", "CPU / (wall x 2 cores)",
                  "idle core-seconds: start-up / between jobs / end", "same tables"],
                 rows), ""])
    print(text)
    if not args.no_write:
        write_section(DOC, TITLE, text)


if __name__ == "__main__":
    main()
