"""Two training jobs side by side: as threads of one process (one interpreter lock) or as two processes.

    python bench/bench_job_processes.py            # writes "Training jobs: threads or processes" in docs/benchmarks.md
    python bench/bench_job_processes.py --no-write

A job of the default experiment's size trains an MLP [100, 100] on MNIST-1D with cross-entropy (3,000
steps, batch 128, one torch thread). The script times one such training alone, then two at once as two
threads of this process (how jobs ran under the default profile's force-use-threads) and as two
processes (how `job_processes` runs them), alternating over the repeats; figures are medians and the
ratios are taken within the run. With two cores, two independent jobs should take as long as one.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DOC, md_table, write_section  # noqa: E402

TITLE = "Training jobs: threads or processes"


def _train(seed: int, steps: int) -> None:
    import torch

    from evomal.learning.context import model_factory
    from evomal.learning.training import train
    from evomal.losses.modules import baseline_loss
    from evomal.tasks.datasets import load_task

    torch.set_num_threads(1)
    task = load_task("mnist1d", seed=0, num_samples=10000)
    build = model_factory({"name": "mlp", "hidden": [100, 100]}, task, torch.device("cpu"))
    train(build(seed), baseline_loss("classification"), task, seed=seed, steps=steps, lr=0.05, momentum=0.9,
          batch_size=128)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")

    def alone():
        _train(0, args.steps)

    def threads():
        ts = [threading.Thread(target=_train, args=(s, args.steps)) for s in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def processes():  # started and warm before the clock starts, as a run's workers are
        with ctx.Pool(2, initializer=_train, initargs=(0, 10)) as pool:
            pool.map(time.sleep, [0.5, 0.5], chunksize=1)  # both workers have finished their initializer
            t0 = time.perf_counter()
            pool.starmap(_train, [(0, args.steps), (1, args.steps)])
            return time.perf_counter() - t0

    _train(0, 50)  # imports and the MNIST-1D cache, outside the clock
    times = {"one training alone": [], "two, as threads of one process": [], "two, as two processes": []}
    for _ in range(args.repeats):
        times["one training alone"].append(_timed(alone))
        times["two, as threads of one process"].append(_timed(threads))
        times["two, as two processes"].append(processes())
    one = statistics.median(times["one training alone"])
    rows = [[k, f"{statistics.median(v):.2f}", f"{statistics.median(v) / one:.2f}"] for k, v in times.items()]
    ratio = statistics.median(times["two, as threads of one process"]) / statistics.median(times["two, as two processes"])
    text = "\n".join([
        f"## {TITLE}", "", f"`python bench/bench_job_processes.py --steps {args.steps} --repeats {args.repeats}`", "",
        f"MNIST-1D (10,000), MLP [100, 100], cross-entropy, {args.steps} steps, batch 128, one torch thread per "
        f"training, 2 cores; medians of {args.repeats} alternating repeats.", "",
        md_table(["what runs", "seconds", "ratio to one alone"], rows), "",
        f"Two jobs as threads take **{ratio:.2f}x** as long as the same two as processes: a step of a small "
        "network is mostly Python, which one interpreter lock runs one thread at a time. This is why the "
        "training jobs of an in-process run use worker processes (`job_processes`).", ""])
    print(text)
    if not args.no_write:
        write_section(DOC, TITLE, text)


if __name__ == "__main__":
    main()
