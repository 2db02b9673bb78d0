"""Per-candidate stages over a shard of a generation: compile, optimise (local search), evaluate.

Per-candidate files are the fine-grained checkpoints: a stage job that runs again (after an interruption,
or ``snakemake -R``) reuses every candidate file whose recorded fingerprint matches its inputs, so no
finished candidate is recomputed; ``recompute=True`` ignores them.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.learning.context import load_task_for, use_threads
from evomal.learning.fitness_measure import FitnessMeasure, non_reference
from evomal.methods import get_method
from evomal.pipeline.contract import LOSS_FILE, candidate_dir, shard_members
from evomal.pipeline.faults import failpoint
from evomal.pipeline.stage_inputs import candidate_seed, learning_setup, resolve


def loss_fingerprint(rec: dict, exp: dict) -> str:
    """What a candidate's loss.json is computed from (compile); evomal.pipeline.check verifies it."""
    return files.fingerprint(rec["expression"], exp["method"], exp["seed"])


def optimized_fingerprint(cdir, exp: dict) -> str:
    """What optimized.pt is computed from: the loss file and the local-search settings."""
    return files.fingerprint(files.file_digest(Path(cdir) / LOSS_FILE), exp["method"], exp["local_search"],
                             exp["training"], exp["dataset"], exp["model"], exp["seed"])


def _finished(read, path: Path, fp: str, say) -> dict | None:
    """The candidate file at ``path`` if it was computed from these inputs (fingerprint ``fp``). A damaged
    one is recomputed like a missing one: a stage never fails on its own output (docs/faults.md)."""
    if not path.exists():
        return None
    try:
        doc = read(path)
    except files.ResultFileError as exc:
        say(f"{path}: damaged, recomputing it ({str(exc).split('; to repair')[0]})")
        return None
    return doc if isinstance(doc, dict) and doc.get("fingerprint") == fp else None


def _shard_job(filter_path, shard: int, manifest_path, stage: str, work, log: str | None) -> None:
    """Run ``work(candidate_record, gen_dir, say) -> (reused: bool)`` over a shard; write the manifest."""
    t0 = time.perf_counter()
    say = JobLog(log, prefix=f"{stage} shard {shard}: ")
    doc = files.read_json(filter_path)
    gen_dir = Path(filter_path).parent
    done, reused = [], []
    for rec in shard_members(doc, shard):
        c0 = time.perf_counter()
        was_reused = work(rec, gen_dir, say)
        (reused if was_reused else done).append(rec["id"])
        say(f"{rec['id']} {'reused' if was_reused else 'done'} in {time.perf_counter() - c0:.2f}s  "
            f"{rec['expression']}")
        failpoint(stage)  # after a finished candidate: a resumed job must not redo it
    files.write_json(manifest_path, {"stage": stage, "shard": shard, "computed": done, "reused": reused})
    record_seconds(manifest_path, f"{stage}_{shard}", time.perf_counter() - t0)


def compile_shard(filter_path, shard: int, manifest_path, *, exp: dict, recompute: bool = False,
                  log: str | None = None) -> None:
    """Expression -> loss network file with its initial edge weights (DESIGN §1.3); a method with its
    own loss family writes its candidates' files (Method.save_candidate_loss: TaylorGLO's θ)."""
    method = get_method(exp["method"])
    kind = load_task_for(exp["dataset"], seed=exp["seed"], device=resolve("cpu")).kind

    def work(rec, gen_dir, say):
        path = candidate_dir(gen_dir, rec["id"]) / "loss.json"
        fp = loss_fingerprint(rec, exp)
        if not recompute and _finished(files.read_json, path, fp, say) is not None:
            return True
        method.save_candidate_loss(path, rec, kind, seed=candidate_seed(exp, rec["id"]), id=rec["id"], fingerprint=fp)
        return False

    _shard_job(filter_path, shard, manifest_path, "compile", work, log)


def optimize_shard(filter_path, shard: int, manifest_path, *, exp: dict, device: str = "cpu",
                   recompute: bool = False, log: str | None = None, threads: int = 1) -> None:
    """Unrolled-differentiation local search of the edge weights (DESIGN §1.4), for methods that have one."""
    use_threads(threads)
    from evomal.losses.lossfile import load_loss
    from evomal.learning.training import unrolled_local_search

    dev, task, build, settings = learning_setup(exp, device)
    ls = exp["local_search"]
    skip_reason = get_method(exp["method"]).skip_local_search_reason(ls["meta_steps"])
    shared = []  # (network, LocalSearchPlan), made for the shard's first candidate that needs a search

    def plan_and_model(say):
        """One network and one plan of initial networks and batches for all the shard's candidates:
        the same for each of them (evomal.learning.plan), so drawn once, not once per candidate."""
        if not shared:
            from evomal.learning.plan import LocalSearchPlan

            t0 = time.perf_counter()
            model = build(exp["seed"])
            plan = LocalSearchPlan.build(task, model, steps=ls["meta_steps"], inner_steps=ls["inner_steps"],
                                         batch_size=settings.batch_size, seed=exp["seed"])
            shared.append((model, plan))
            say(f"local-search plan: {len(plan.states)} of {plan.steps} initial networks stored, "
                f"{time.perf_counter() - t0:.2f}s")
        return shared[0]

    def work(rec, gen_dir, say):
        cdir = candidate_dir(gen_dir, rec["id"])
        out = cdir / "optimized.pt"
        fp = optimized_fingerprint(cdir, exp)
        if not recompute and _finished(files.read_tensors, out, fp, say) is not None:
            return True
        loss = load_loss(cdir / "loss.json").to(dev)
        if skip_reason is not None:
            result = {"weights": loss.weights.detach().cpu().clone(), "curve": [], "status": "skipped",
                      "reason": skip_reason, "seconds": 0.0}
        else:
            model, plan = plan_and_model(say)
            r = unrolled_local_search(loss, task, model, steps=ls["meta_steps"], meta_lr=ls["meta_lr"],
                                      inner_steps=ls["inner_steps"], seed=exp["seed"], plan=plan,
                                      **settings.optimizer_kwargs())
            result = {"weights": r.weights.detach().cpu().clone(), "curve": list(map(float, r.curve)),
                      "status": r.status, "reason": r.reason or "", "seconds": float(r.seconds)}
            if r.status != "ok":
                say(f"{rec['id']}: local search stopped: {r.reason}")
        result["fingerprint"] = fp
        files.write_tensors(out, result)
        return False

    _shard_job(filter_path, shard, manifest_path, "optimize", work, log)


def evaluate_shard(filter_path, shard: int, manifest_path, *, exp: dict, device: str = "cpu",
                   recompute: bool = False, log: str | None = None, threads: int = 1, archive=None) -> None:
    """Fitness by partial training (DESIGN §1.6); a bad loss gets inf with its reason, never an error.

    With ``early_stop`` enabled, ``archive`` (the previous generation's archive.json) and the shard's
    earlier candidates are what a candidate is compared with at the checkpoints (evomal.pipeline.early_stopping).
    """
    use_threads(threads)
    from evomal.losses.lossfile import load_loss
    from evomal.learning.training import fitness
    from evomal.pipeline.early_stopping import early_stop_board

    dev, task, build, settings = learning_setup(exp, device)
    measure = FitnessMeasure.from_config(exp.get("fitness"))
    # the reference measure keeps the fingerprints of runs made before the measure was configurable
    changed = non_reference(exp["fitness"])
    measure_fp = (changed,) if changed else ()
    board = early_stop_board(exp, settings.steps, archive)  # None when off: files as without the feature

    def work(rec, gen_dir, say):
        cdir = candidate_dir(gen_dir, rec["id"])
        out = cdir / "fitness.json"
        opt = files.read_tensors(cdir / "optimized.pt")
        # the learned weights, not the file: optimized.pt also holds wall-clock seconds
        fp = files.fingerprint(opt["weights"].tolist(), files.file_digest(cdir / "loss.json"),
                               exp["training"], exp["dataset"], exp["model"], exp["seed"], *measure_fp,
                               *(() if board is None else (exp["early_stop"], board.snapshot())))
        if not recompute and (old := _finished(files.read_json, out, fp, say)) is not None:
            if board is not None:
                board.add(old.get("checkpoints", []))
            return True
        loss = load_loss(cdir / "loss.json").to(dev)
        loss.weights.data.copy_(opt["weights"].to(dev))
        seeds = measure.seeds_for(exp["seed"])
        runs = []
        for seed in seeds:  # the board judges the first run; a candidate stopped there runs no other seed
            runs.append(fitness(loss, task, build(seed), steps=settings.steps, seed=seed,
                                eval_every=measure.eval_every_for(settings.steps),
                                early_stop=board if seed == seeds[0] else None, **settings.optimizer_kwargs()))
            if runs[0].stopped_at is not None:
                break
        r = runs[0]
        failed = next((x for x in runs if x.reason), None)
        value = math.inf if failed else (r.fitness if measure.is_reference else measure.value([x.curve for x in runs]))
        doc = {"id": rec["id"], "expression": rec["expression"], "fitness": float(value),
               "reason": failed.reason if failed else "", "curve": r.curve,
               "timings": {"local_search": float(opt.get("seconds", 0.0)),
                           "fitness": float(sum(x.seconds for x in runs))},
               "fingerprint": fp}
        if len(runs) > 1:
            doc["seed_curves"] = [x.curve for x in runs[1:]]
        if board is not None:
            doc["checkpoints"], doc["stopped_at"] = r.checkpoints, r.stopped_at
            board.add(r.checkpoints)
        files.write_json(out, doc)
        r = failed or r
        if r.reason:
            say(f"{rec['id']}: fitness inf: {r.reason}")
        return False

    _shard_job(filter_path, shard, manifest_path, "evaluate", work, log)
