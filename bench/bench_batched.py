"""Batched candidates: candidates per core-minute trained as one stacked group vs one after another.

    python bench/bench_batched.py              # writes "Batched candidates" in docs/benchmarks.md
    python bench/bench_batched.py --quick      # smaller counts (--no-write to print only)
    python bench/bench_batched.py --device cuda   # the same on a GPU (section "Batched candidates, CUDA")

Each case takes a group of candidate losses (a shard's worth) and times, on one thread, their fitness
training and their local search one by one (evomal.learning.training) and as one group
(evomal.learning.batched), alternating the two paths over the repeats so that load on a shared machine
falls on both alike; the figures are medians and the ratio is taken within the run. It also reports the
largest difference between the two paths' fitness values (they agree up to the rounding of batched matrix
products; a chaotic loss can amplify it) and the decision of ``batching: auto`` for the network.
Cases: MLP [100, 100] on digits, the default experiment's (MNIST-1D, MLP [100, 100]), LeNet-5 on a
Fashion-MNIST subset (the quality benchmark's) and the preset diabetes-mlp-ref (MLP [1000, 1000]).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DOC, md_table, write_section  # noqa: E402

from evomal.gp.expressions import parse  # noqa: E402
from evomal.learning.batched import AUTO_MAX_PARAMS, fitness_group, local_search_group, use_batching  # noqa: E402
from evomal.learning.plan import LocalSearchPlan  # noqa: E402
from evomal.learning.training import fitness, unrolled_local_search  # noqa: E402
from evomal.losses.modules import CompiledLoss, initial_weights  # noqa: E402
from evomal.tasks.datasets import load_task  # noqa: E402
from evomal.tasks.models import build_model  # noqa: E402

CLASSIFICATION = ["mul(-1, mul(y, log(f)))", "square(sub(f, y))", "mul(-1, mul(mul(sub(1, f), y), log(f)))",
                  "abs(sub(f, y))", "mul(-1, mul(y, log(add(f, 1))))", "mul(sub(f, y), tanh(sub(f, y)))"]
REGRESSION = ["square(sub(f, y))", "sqrt(abs(sub(f, y)))", "add(square(sub(f, y)), mul(tanh(f), sub(y, f)))",
              "abs(sub(f, y))", "mul(sub(f, y), tanh(sub(f, y)))", "square(sub(tanh(f), tanh(y)))"]
CASES = {
    "digits": dict(label="digits, MLP [100, 100]", dataset=("digits", {}), hidden=[100, 100], losses=CLASSIFICATION,
                                   sgd=dict(lr=0.05, momentum=0.9, batch_size=128), steps=500, meta_steps=50),
    "default": dict(
        label="default experiment (MNIST-1D, MLP [100, 100])", dataset=("mnist1d", {"num_samples": 10000, "validation_fraction": 0.15}), hidden=[100, 100],
        losses=CLASSIFICATION, sgd=dict(lr=0.05, momentum=0.9, batch_size=128), steps=1000, meta_steps=50),
    "lenet": dict(
        label="Fashion-MNIST (5,000), LeNet-5", dataset=("fashion_mnist", {"train_size": 5000}), model="lenet5",
        losses=CLASSIFICATION, sgd=dict(lr=0.01, momentum=0.9, batch_size=128), steps=200, meta_steps=30),
    "preset": dict(
        label="diabetes-mlp-ref (MLP [1000, 1000])", dataset=("diabetes", {}), hidden=[1000, 1000], losses=REGRESSION,
        sgd=dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=128), steps=200, meta_steps=50),
}
TITLE = "Batched candidates"


def _losses(exprs: list[str], kind: str, device) -> list[CompiledLoss]:
    return [CompiledLoss(parse(e), kind, initial_weights(parse(e), seed=i)).to(device) for i, e in enumerate(exprs)]


def run_case(case: dict, *, repeats: int, scale: float, device) -> dict:
    name, options = case["dataset"]
    task = load_task(name, seed=0, device=device, **options)
    options = {} if case.get("model") else {"hidden": case["hidden"]}
    build = lambda: build_model(case.get("model", "mlp"), task.input_shape, task.num_outputs, seed=0,  # noqa: E731
                                device=device, **options)
    steps, meta_steps = max(1, int(case["steps"] * scale)), max(1, int(case["meta_steps"] * scale))
    sgd, exprs = case["sgd"], case["losses"]
    plan = LocalSearchPlan.build(task, build(), steps=meta_steps, batch_size=sgd["batch_size"], seed=0)

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    paths = {
        "fitness, one by one": lambda: [fitness(l, task, build(), steps=steps, seed=0, **sgd)
                                        for l in _losses(exprs, task.kind, device)],
        "fitness, batched": lambda: fitness_group(_losses(exprs, task.kind, device), task, build(), steps=steps,
                                                  seed=0, **sgd),
        "local search, one by one": lambda: [unrolled_local_search(l, task, build(), steps=meta_steps, seed=0,
                                                                   plan=plan, **sgd)
                                             for l in _losses(exprs, task.kind, device)],
        "local search, batched": lambda: local_search_group(_losses(exprs, task.kind, device), task, build(),
                                                            steps=meta_steps, seed=0, plan=plan, **sgd),
    }
    for fn in paths.values():  # warm-up: first-call costs (vmap's decompositions, allocator) are not throughput
        timed(fn)
    times = {k: [] for k in paths}
    outs = {}
    for _ in range(repeats):
        for key, fn in paths.items():
            seconds, outs[key] = timed(fn)
            times[key].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    fit_diff = max(abs(a.fitness - b.fitness) for a, b in zip(outs["fitness, one by one"], outs["fitness, batched"])
                   if a.reason is None and b.reason is None)
    w_diff = max(float((a.weights - b.weights).abs().max()) for a, b in
                 zip(outs["local search, one by one"], outs["local search, batched"]))
    return dict(med=med, k=len(exprs), steps=steps, meta_steps=meta_steps, fit_diff=fit_diff, w_diff=w_diff,
                auto=use_batching("auto", build(), device),
                params=sum(p.numel() for p in build().parameters()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the steps, 2 repeats")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    scale, repeats = (0.1, 2) if args.quick else (1.0, args.repeats)
    rows = []
    for name in [c for c in args.cases.split(",") if c]:
        r = run_case(CASES[name], repeats=repeats, scale=scale, device=args.device)
        m, k = r["med"], r["k"]
        per_min = {key: 60 * k / sec for key, sec in m.items()}
        cand_seq = 60 * k / (m["fitness, one by one"] + m["local search, one by one"])
        cand_bat = 60 * k / (m["fitness, batched"] + m["local search, batched"])
        rows.append([CASES[name]["label"], f"{r['params']:,}", k, f"{r['steps']} / {r['meta_steps']}",
                     f"{per_min['fitness, one by one']:.1f} → {per_min['fitness, batched']:.1f} "
                     f"({m['fitness, one by one'] / m['fitness, batched']:.2f}x)",
                     f"{per_min['local search, one by one']:.1f} → {per_min['local search, batched']:.1f} "
                     f"({m['local search, one by one'] / m['local search, batched']:.2f}x)",
                     f"{cand_seq:.1f} → {cand_bat:.1f} ({cand_bat / cand_seq:.2f}x)",
                     f"{r['fit_diff']:.2g} / {r['w_diff']:.2g}", "batched" if r["auto"] else "one by one"])
        print(rows[-1], flush=True)
    title = TITLE if args.device == "cpu" else f"{TITLE}, {args.device.split(':')[0].upper()}"
    table = md_table(["case", "parameters", "candidates", "fitness / meta steps",
                      "fitness: candidates per core-minute", "local search: candidates per core-minute",
                      "both", "largest difference: fitness / weights", "`batching: auto`"], rows)
    cmd = f"python bench/bench_batched.py{' --quick' if args.quick else ''}" + \
          (f" --device {args.device}" if args.device != "cpu" else "")
    section = (f"## {title}\n\n`{cmd}` ({time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} thread, "
               f"median of {repeats} alternating repeats, device {args.device}). One candidate per core-minute "
               "means one loss's fitness training (or local search) at the stated steps; 'both' is a whole "
               "candidate. Measured side by side in one run.\n\n" + table + "\n\n"
               "The largest difference is between the two paths' fitness (validation error rate / MSE after the "
               "whole training: rounding, amplified by training) and their learned weights. `auto`'s threshold "
               f"({AUTO_MAX_PARAMS:,} parameters) lies between the cases measured here; it is not tuned at its "
               "boundary.\n")
    print(section)
    if not args.no_write:
        write_section(DOC, title, section)


if __name__ == "__main__":
    main()
