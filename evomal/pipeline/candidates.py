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
from evomal.core.workers import in_worker
from evomal.learning.context import load_task_for, use_threads
from evomal.learning.fitness_measure import FitnessMeasure, non_reference
from evomal.methods import get_method
from evomal.pipeline.contract import FITNESS_FILE, LOSS_FILE, OPTIMIZED_FILE, candidate_dir, shard_members
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


def _job_log(log: str | None, stage: str, shard: int) -> JobLog:
    return JobLog(log, prefix=f"{stage} shard {shard}: ")


def _shard_job(filter_path, shard: int, manifest_path, stage: str, work, say: JobLog, *, batched=None) -> None:
    """Run ``work(candidate_record, gen_dir, say) -> (reused: bool)`` over a shard; write the manifest.

    ``batched(records, gen_dir, say) -> [None (reused) | write()]`` computes a group of candidates at
    once (evomal.learning.batched) instead; the groups are fixed by the shard's members, and their files
    are written one by one, so a kill between two leaves whole candidates behind as the sequential path does.
    """
    t0 = time.perf_counter()
    doc = files.read_json(filter_path)
    gen_dir = Path(filter_path).parent
    done, reused = [], []

    def finished(rec, was_reused: bool, seconds: float, note: str = "") -> None:
        (reused if was_reused else done).append(rec["id"])
        say(f"{rec['id']} {'reused' if was_reused else 'done'} in {seconds:.2f}s{note}  {rec['expression']}")
        failpoint(stage)  # after a finished candidate: a resumed job must not redo it

    members = shard_members(doc, shard)
    if batched is None:
        for rec in members:
            c0 = time.perf_counter()
            was_reused = work(rec, gen_dir, say)
            finished(rec, was_reused, time.perf_counter() - c0)
    else:
        from evomal.learning.batched import groups

        for group in groups(members):
            c0 = time.perf_counter()
            writes = batched(group, gen_dir, say)
            share = (time.perf_counter() - c0) / len(group)
            for rec, write in zip(group, writes):
                if write is not None:
                    write()
                finished(rec, write is None, 0.0 if write is None else share,
                         "" if write is None else f" (a group of {len(group)})")
    files.write_json(manifest_path, {"stage": stage, "shard": shard, "computed": done, "reused": reused})
    record_seconds(manifest_path, f"{stage}_{shard}", time.perf_counter() - t0)


def _batching(mode: str, build, dev, say) -> bool:
    """Whether this job trains its candidates as stacked groups (evomal.learning.batched.use_batching)."""
    from evomal.learning.batched import unbatchable_reason, use_batching

    model = build(0)
    on = use_batching(mode, model, dev)
    if mode == "on" and not on:
        say(f"batching: on, but {unbatchable_reason(model)}: candidates run one by one")
    return on


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

    _shard_job(filter_path, shard, manifest_path, "compile", work, _job_log(log, "compile", shard))


@in_worker
def optimize_shard(filter_path, shard: int, manifest_path, *, exp: dict, device: str = "cpu",
                   recompute: bool = False, log: str | None = None, threads: int = 1,
                   batching: str = "off") -> None:
    """Unrolled-differentiation local search of the edge weights (DESIGN §1.4), for methods that have one.

    ``batching`` (the config's key: auto, on, off) searches a group of candidates at once
    (evomal.learning.batched.local_search_group)."""
    use_threads(threads)
    from evomal.losses.lossfile import load_loss
    from evomal.learning.training import unrolled_local_search

    say = _job_log(log, "optimize", shard)
    dev, task, build, settings = learning_setup(exp, device)
    ls = exp["local_search"]
    skip_reason = get_method(exp["method"]).skip_local_search_reason(ls["meta_steps"])
    search = dict(steps=ls["meta_steps"], meta_lr=ls["meta_lr"], inner_steps=ls["inner_steps"], seed=exp["seed"],
                  **settings.optimizer_kwargs())
    shared = []  # (network, LocalSearchPlan), made for the shard's first candidate that needs a search

    def plan_and_model():
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

    def pending(rec, gen_dir):
        """(output path, fingerprint, loss) of a candidate, the loss None when its file is finished."""
        cdir = candidate_dir(gen_dir, rec["id"])
        out, fp = cdir / "optimized.pt", optimized_fingerprint(cdir, exp)
        if not recompute and _finished(files.read_tensors, out, fp, say) is not None:
            return out, fp, None
        return out, fp, load_loss(cdir / "loss.json").to(dev)

    def result_of(rec, loss, r) -> dict:
        if r is None:
            return {"weights": loss.weights.detach().cpu().clone(), "curve": [], "status": "skipped",
                    "reason": skip_reason, "seconds": 0.0}
        if r.status != "ok":
            say(f"{rec['id']}: local search stopped: {r.reason}")
        return {"weights": r.weights.detach().cpu().clone(), "curve": list(map(float, r.curve)),
                "status": r.status, "reason": r.reason or "", "seconds": float(r.seconds)}

    def write(out, fp, result):
        return lambda: files.write_tensors(out, {**result, "fingerprint": fp})

    def work(rec, gen_dir, _say):
        out, fp, loss = pending(rec, gen_dir)
        if loss is None:
            return True
        r = None
        if skip_reason is None:
            model, plan = plan_and_model()
            r = unrolled_local_search(loss, task, model, plan=plan, **search)
        write(out, fp, result_of(rec, loss, r))()
        return False

    def group_work(recs, gen_dir, _say):
        """The whole group is searched when any member is unfinished: a member's values never depend on
        which of its group's members a resumed job still had to compute."""
        from evomal.learning.batched import local_search_group

        todo = [pending(rec, gen_dir) for rec in recs]
        if all(loss is None for _, _, loss in todo):
            return [None] * len(recs)
        losses = [loss if loss is not None else load_loss(candidate_dir(gen_dir, rec["id"]) / LOSS_FILE).to(dev)
                  for rec, (_, _, loss) in zip(recs, todo)]
        model, plan = plan_and_model()
        results = local_search_group(losses, task, model, plan=plan, **search)
        return [None if loss is None else write(out, fp, result_of(rec, losses[i], results[i]))
                for i, (rec, (out, fp, loss)) in enumerate(zip(recs, todo))]

    batched = group_work if skip_reason is None and _batching(batching, build, dev, say) else None
    _shard_job(filter_path, shard, manifest_path, "optimize", work, say, batched=batched)


@in_worker
def evaluate_shard(filter_path, shard: int, manifest_path, *, exp: dict, device: str = "cpu",
                   recompute: bool = False, log: str | None = None, threads: int = 1, archive=None,
                   batching: str = "off") -> None:
    """Fitness by partial training (DESIGN §1.6); a bad loss gets inf with its reason, never an error.

    With ``early_stop`` enabled, ``archive`` (the previous generation's archive.json) and the shard's
    earlier candidates are what a candidate is compared with at the checkpoints (evomal.pipeline.early_stopping);
    the candidates then run one by one. Otherwise ``batching`` (auto, on, off) trains a group of candidates
    at once (evomal.learning.batched.fitness_group).
    """
    use_threads(threads)
    from evomal.losses.lossfile import load_loss
    from evomal.learning.training import fitness
    from evomal.pipeline.early_stopping import early_stop_board

    say = _job_log(log, "evaluate", shard)
    dev, task, build, settings = learning_setup(exp, device)
    measure = FitnessMeasure.from_config(exp.get("fitness"))
    # the reference measure keeps the fingerprints of runs made before the measure was configurable
    changed = non_reference(exp["fitness"])
    measure_fp = (changed,) if changed else ()
    board = early_stop_board(exp, settings.steps, archive)  # None when off: files as without the feature
    seeds = measure.seeds_for(exp["seed"])
    run = dict(steps=settings.steps, eval_every=measure.eval_every_for(settings.steps), **settings.optimizer_kwargs())

    def pending(rec, gen_dir):
        """(fingerprint, learned loss or None when its fitness.json is finished, optimized.pt's contents)."""
        cdir = candidate_dir(gen_dir, rec["id"])
        opt = files.read_tensors(cdir / OPTIMIZED_FILE)
        # the learned weights, not the file: optimized.pt also holds wall-clock seconds
        fp = files.fingerprint(opt["weights"].tolist(), files.file_digest(cdir / LOSS_FILE),
                               exp["training"], exp["dataset"], exp["model"], exp["seed"], *measure_fp,
                               *(() if board is None else (exp["early_stop"], board.snapshot())))
        if not recompute and (old := _finished(files.read_json, cdir / FITNESS_FILE, fp, say)) is not None:
            if board is not None:
                board.add(old.get("checkpoints", []))
            return fp, None, opt
        return fp, _learned(cdir, opt), opt

    def _learned(cdir, opt):
        loss = load_loss(cdir / LOSS_FILE).to(dev)
        loss.weights.data.copy_(opt["weights"].to(dev))
        return loss

    def write(rec, gen_dir, fp, opt, runs):
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

        def save():
            files.write_json(candidate_dir(gen_dir, rec["id"]) / FITNESS_FILE, doc)
            if (failed or r).reason:
                say(f"{rec['id']}: fitness inf: {(failed or r).reason}")
        return save

    def work(rec, gen_dir, _say):
        fp, loss, opt = pending(rec, gen_dir)
        if loss is None:
            return True
        runs = []
        for seed in seeds:  # the board judges the first run; a candidate stopped there runs no other seed
            runs.append(fitness(loss, task, build(seed), seed=seed, early_stop=board if seed == seeds[0] else None,
                                **run))
            if runs[0].stopped_at is not None:
                break
        write(rec, gen_dir, fp, opt, runs)()
        return False

    def group_work(recs, gen_dir, _say):
        """As optimize's: the whole group is trained when any member is unfinished."""
        from evomal.learning.batched import fitness_group

        todo = [pending(rec, gen_dir) for rec in recs]
        if all(loss is None for _, loss, _ in todo):
            return [None] * len(recs)
        losses = [loss if loss is not None else _learned(candidate_dir(gen_dir, rec["id"]), opt)
                  for rec, (_, loss, opt) in zip(recs, todo)]
        by_seed = [fitness_group(losses, task, build(seed), seed=seed, **run) for seed in seeds]
        return [None if loss is None else write(rec, gen_dir, fp, opt, [runs[i] for runs in by_seed])
                for i, (rec, (fp, loss, opt)) in enumerate(zip(recs, todo))]

    batched = group_work if board is None and _batching(batching, build, dev, say) else None
    _shard_job(filter_path, shard, manifest_path, "evaluate", work, say, batched=batched)
