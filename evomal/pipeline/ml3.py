"""ML3's stage (DESIGN §1.8): meta-learn the neural loss, write it as the experiment's best/loss.json.

One job: ML3 has no population, so there are no generation folders. The loss file holds the network's
weights (a JSON list), the meta-training curve and the partial-training fitness of the learned loss.
"""
from __future__ import annotations

import time

from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.learning.context import use_threads
from evomal.pipeline.faults import failpoint
from evomal.pipeline.stage_inputs import learning_setup


def meta_train_stage(out_path, *, exp: dict, device: str = "cpu", log: str | None = None, threads: int = 1) -> None:
    """Meta-train ML3's loss network with EvoMAL's local search (``local_search``, ``training``)."""
    use_threads(threads)
    from evomal.losses.families import write_document
    from evomal.losses.neural import document
    from evomal.methods.ml3 import meta_train

    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="ml3: ")
    _, task, build, settings = learning_setup(exp, device)
    ls = exp["local_search"]
    r = meta_train(task, build, seed=exp["seed"], meta_steps=ls["meta_steps"], meta_lr=ls["meta_lr"],
                   inner_steps=ls["inner_steps"], settings=settings)
    if r.search.status != "ok":
        say(f"meta-training stopped early: {r.search.reason}")
    failpoint("best")
    write_document(out_path, document(
        task.kind, r.loss.weights, method=exp["method"], fitness=float(r.fitness.fitness),
        fitness_reason=r.fitness.reason or "", fitness_curve=r.fitness.curve,
        # no wall-clock seconds here (they are in best/timings/): a rerun writes the same bytes
        meta_training={"status": r.search.status, "reason": r.search.reason or "", "steps": r.search.steps,
                       "curve": [float(v) for v in r.search.curve]}))
    record_seconds(out_path, "ml3_meta_train", time.perf_counter() - t0)
    first, last = (r.search.curve[0], r.search.curve[-1]) if r.search.curve else (float("nan"),) * 2
    say(f"{r.search.steps} meta steps (validation task loss {first:.4f} -> {last:.4f}), "
        f"fitness {r.fitness.fitness:.4f} in {time.perf_counter() - t0:.1f}s")
