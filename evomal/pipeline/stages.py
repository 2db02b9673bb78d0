"""One function per pipeline stage: files in, files out (DESIGN §3). Snakemake rules call these.

Per-candidate files are the fine-grained checkpoints: a stage job that runs again (after an interruption,
or ``snakemake -R``) reuses every candidate file whose recorded fingerprint matches its inputs, so no
finished candidate is recomputed; ``recompute=True`` ignores them.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

from evomal.core import files
from evomal.learning.context import TrainingSettings, load_task_for, model_factory, use_threads
from evomal.gp.expressions import ExpressionError, parse
from evomal.pipeline.contract import (DECISIONS, PER_SEED_COLUMNS, TABLE_COLUMNS, active_shards,
                                     candidate_dir, shard_members)
from evomal.pipeline.faults import failpoint
from evomal.tasks.spec import component
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.gp.operators import Individual, breed, derive_rng, init_population


def _device(device_spec: str):
    from evomal.learning.devices import resolve_device

    return resolve_device(device_spec)


def _learning_setup(exp: dict, device: str):
    """Device, task (memoised per process), seed -> network factory, and the base training settings."""
    dev = _device(device)
    task = load_task_for(exp["dataset"], seed=exp["seed"], device=dev)
    return dev, task, model_factory(exp["model"], task, dev), TrainingSettings.from_config(exp["training"])


def _candidate_seed(exp: dict, cand_id: str) -> int:
    return derive_rng(exp["seed"], "weights", cand_id).getrandbits(31)


# --------------------------------------------------------------------------- run record
def write_experiment_config(out_path, *, experiment: str, config: dict, log: str | None = None) -> None:
    """The resolved config of one experiment, as it ran (DESIGN §3)."""
    import yaml

    t0 = time.perf_counter()
    doc = {"experiment": experiment, "device": config["device"], "shards": config["shards"],
           "tracking_uri": config["tracking_uri"], **config["experiments"][experiment]}
    files.atomic_write_bytes(out_path, yaml.safe_dump(doc, sort_keys=False).encode())
    record_seconds(out_path, "experiment_config", time.perf_counter() - t0)
    JobLog(log)(f"wrote {out_path}")


# --------------------------------------------------------------------------- population
def _read_population(path) -> list[Individual]:
    doc = files.read_json(path)
    try:
        return [Individual.from_dict(d) for d in doc["individuals"]]
    except (KeyError, TypeError) as exc:
        raise files.ResultFileError(f"corrupted results file {path}: bad individual record ({exc})") from None


def make_population(out_path, experiment: str, exp: dict, generation: int, *, population=None, fitness=None,
                    log: str | None = None) -> None:
    """Generation 0 by ramped half-and-half; generation g > 0 bred only from generation g-1's files."""
    t0 = time.perf_counter()
    s = exp["search"]
    if generation == 0:
        individuals = init_population(s["population"], seed=exp["seed"], init_height=tuple(s["init_height"]),
                                      max_height=s["max_height"])
    else:
        parents = _read_population(population)
        table = files.read_tsv(fitness)
        fitness = {str(r.id): float(r.fitness) for r in table.itertuples()}
        individuals = breed(parents, fitness, seed=exp["seed"], generation=generation, size=s["population"],
                            crossover=s["crossover"], mutation=s["mutation"], tournament=s["tournament"],
                            max_height=s["max_height"], elitism=s["elitism"])
    failpoint("population")
    files.write_json(out_path, {
        "experiment": experiment, "generation": generation, "seed": exp["seed"],
        "individuals": [i.to_dict() for i in individuals],
    })
    record_seconds(out_path, "population", time.perf_counter() - t0)
    JobLog(log)(f"generation {generation}: {len(individuals)} individuals")


# --------------------------------------------------------------------------- filtering
def _read_archive(path) -> dict:
    if path is None:
        return {"entries": []}
    return files.read_json(path)


def filter_population(population_path, out_path, *, exp: dict, shards: int, device: str = "cpu",
                      prev_archive=None, log: str | None = None, threads: int = 1) -> None:
    """DESIGN §1.5: symbolic equivalence, rejection protocol, gradient equivalence, in that order."""
    use_threads(threads)
    from evomal.gp.canonical import canonical_key
    from evomal.learning.filters import gradient_signature, rejection_test, signature_is_valid, signatures_match

    t0 = time.perf_counter()
    say = JobLog(log)
    flt = exp["filters"]
    individuals = _read_population(population_path)
    archive = _read_archive(prev_archive)["entries"]
    by_key = {e["key"]: e for e in archive}
    signed = [e for e in archive if e.get("signature") is not None and e["decision"] == "evaluate"]

    dev, task, build, settings = _learning_setup(exp, device)

    records: list[dict] = []
    seen: dict[str, dict] = {}
    evaluated_here: list[dict] = []
    for ind in individuals:
        rec = {"id": ind.id, "expression": ind.expression, "key": None, "key_method": None,
               "decision": None, "reason": None, "reuse_of": None, "shard": None, "signature": None,
               "rejection_improvement": None}
        records.append(rec)
        try:
            tree = parse(ind.expression)
        except ExpressionError as exc:
            raise ExpressionError(f"{population_path}: individual {ind.id}: {exc}") from None
        missing = {"y", "f"} - tree.variables()
        if missing:
            rec.update(decision="invalid", reason=f"expression lacks {' and '.join(sorted(missing))} "
                       "(hand-edited population files are not repaired)")
            continue
        if flt["symbolic"]:
            ck = canonical_key(tree)
            rec.update(key=ck.key, key_method=ck.method)
        else:  # the reference's rule: exact prefix strings only
            rec.update(key=str(tree), key_method="text")
        if rec["key"] in by_key:
            prior = by_key[rec["key"]]
            rec.update(decision="equivalent", reuse_of=prior["id"],
                       reason=f"same canonical form as {prior['id']} (generation {prior['generation']})")
            continue
        if rec["key"] in seen:
            rec.update(decision="equivalent", reuse_of=seen[rec["key"]]["id"],
                       reason=f"same canonical form as {seen[rec['key']]['id']} in this generation")
            continue
        seen[rec["key"]] = rec
        if flt["rejection"]:
            rej = rejection_test(tree, task, build(exp["seed"]), samples=flt["rejection_samples"],
                                 steps=flt["rejection_steps"], lr=settings.lr, seed=exp["seed"])
            rec["rejection_improvement"] = rej.improvement
            if not rej.accepted:
                rec.update(decision="rejected", reason=rej.reason)
                continue
        if flt["gradient"]:
            sig = gradient_signature(tree, task.kind, task.num_outputs, seed=exp["seed"])
            if not signature_is_valid(sig):
                rec.update(decision="rejected", reason="non-finite gradient of the loss at the probe inputs")
                continue
            rec["signature"] = list(sig)
            match = next((e for e in signed + evaluated_here
                          if signatures_match(sig, e["signature"], flt["gradient_tolerance"])), None)
            if match is not None:
                rec.update(decision="gradient_equivalent", reuse_of=match["id"],
                           reason=f"per-sample gradient norms match {match['id']} within "
                                  f"{flt['gradient_tolerance']}")
                continue
        rec.update(decision="evaluate", reason="new loss")
        evaluated_here.append(rec)
    failpoint("filter")
    for i, rec in enumerate(evaluated_here):
        rec["shard"] = i % shards
    counts = {d: sum(r["decision"] == d for r in records) for d in DECISIONS}
    files.write_json(out_path, {"generation": files.read_json(population_path)["generation"],
                                "shards": shards, "counts": counts, "candidates": records})
    record_seconds(out_path, "filter", time.perf_counter() - t0)
    say(f"filter: {counts}")


# --------------------------------------------------------------------------- per-candidate stages
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
    """Expression -> loss network file with its initial edge weights (DESIGN §1.3)."""
    from evomal.losses.compile import initial_weights, save_loss

    kind = load_task_for(exp["dataset"], seed=exp["seed"], device=_device("cpu")).kind

    def work(rec, gen_dir, say):
        path = candidate_dir(gen_dir, rec["id"]) / "loss.json"
        fp = files.fingerprint(rec["expression"], exp["method"], exp["seed"])
        if not recompute and path.exists() and files.read_json(path).get("fingerprint") == fp:
            return True
        tree = parse(rec["expression"])
        if exp["method"] == "gplfl":
            weights = initial_weights(tree, seed=0, noise=0.0)
        else:
            weights = initial_weights(tree, seed=_candidate_seed(exp, rec["id"]))
        save_loss(path, tree, kind, weights, id=rec["id"], fingerprint=fp)
        return False

    _shard_job(filter_path, shard, manifest_path, "compile", work, log)


def optimize_shard(filter_path, shard: int, manifest_path, *, exp: dict, device: str = "cpu",
                   recompute: bool = False, log: str | None = None, threads: int = 1) -> None:
    """Unrolled-differentiation local search of the edge weights (DESIGN §1.4); GP-LFL keeps them."""
    use_threads(threads)
    from evomal.losses.compile import load_loss
    from evomal.learning.training import unrolled_local_search

    dev, task, build, settings = _learning_setup(exp, device)
    ls = exp["local_search"]

    def work(rec, gen_dir, say):
        cdir = candidate_dir(gen_dir, rec["id"])
        out = cdir / "optimized.pt"
        fp = files.fingerprint(files.file_digest(cdir / "loss.json"), exp["method"], ls, exp["training"],
                               exp["dataset"], exp["model"], exp["seed"])
        if not recompute and out.exists() and files.read_tensors(out).get("fingerprint") == fp:
            return True
        loss = load_loss(cdir / "loss.json").to(dev)
        if exp["method"] == "gplfl" or ls["meta_steps"] == 0:
            result = {"weights": loss.weights.detach().cpu().clone(), "curve": [], "status": "skipped",
                      "reason": "no local search (GP-LFL)" if exp["method"] == "gplfl" else "meta_steps is 0",
                      "seconds": 0.0}
        else:
            r = unrolled_local_search(loss, task, build(exp["seed"]), steps=ls["meta_steps"],
                                      meta_lr=ls["meta_lr"], inner_steps=ls["inner_steps"],
                                      seed=exp["seed"], **settings.optimizer_kwargs())
            result = {"weights": r.weights.detach().cpu().clone(), "curve": list(map(float, r.curve)),
                      "status": r.status, "reason": r.reason or "", "seconds": float(r.seconds)}
            if r.status != "ok":
                say(f"{rec['id']}: local search stopped: {r.reason}")
        result["fingerprint"] = fp
        files.write_tensors(out, result)
        return False

    _shard_job(filter_path, shard, manifest_path, "optimize", work, log)


def evaluate_shard(filter_path, shard: int, manifest_path, *, exp: dict, device: str = "cpu",
                   recompute: bool = False, log: str | None = None, threads: int = 1) -> None:
    """Fitness by partial training (DESIGN §1.6); a bad loss gets inf with its reason, never an error."""
    use_threads(threads)
    from evomal.losses.compile import load_loss
    from evomal.learning.training import fitness

    dev, task, build, settings = _learning_setup(exp, device)

    def work(rec, gen_dir, say):
        cdir = candidate_dir(gen_dir, rec["id"])
        out = cdir / "fitness.json"
        opt = files.read_tensors(cdir / "optimized.pt")
        # the learned weights, not the file: optimized.pt also holds wall-clock seconds
        fp = files.fingerprint(opt["weights"].tolist(), files.file_digest(cdir / "loss.json"),
                               exp["training"], exp["dataset"], exp["model"], exp["seed"])
        if not recompute and out.exists() and files.read_json(out).get("fingerprint") == fp:
            return True
        loss = load_loss(cdir / "loss.json").to(dev)
        loss.weights.data.copy_(opt["weights"].to(dev))
        r = fitness(loss, task, build(exp["seed"]), steps=settings.steps, seed=exp["seed"],
                    **settings.optimizer_kwargs())
        files.write_json(out, {"id": rec["id"], "expression": rec["expression"], "fitness": float(r.fitness),
                               "reason": r.reason or "", "curve": r.curve,
                               "timings": {"local_search": float(opt.get("seconds", 0.0)),
                                           "fitness": float(r.seconds)},
                               "fingerprint": fp})
        if r.reason:
            say(f"{rec['id']}: fitness inf: {r.reason}")
        return False

    _shard_job(filter_path, shard, manifest_path, "evaluate", work, log)


# --------------------------------------------------------------------------- gathering
def gather_generation(filter_path, population_path, out_table, out_archive, *, generation: int,
                      prev_archive=None, log: str | None = None) -> dict:
    """Fitness table of a generation and the cumulative archive that the next generation filters against."""
    t0 = time.perf_counter()
    doc = files.read_json(filter_path)
    gen_dir = Path(filter_path).parent
    population = {i.id: i for i in _read_population(population_path)}
    archive = _read_archive(prev_archive)
    known = {e["id"]: e for e in archive["entries"]}
    rows, new_entries = [], []
    for rec in doc["candidates"]:
        fit, reason = math.inf, rec["reason"]
        if rec["decision"] == "evaluate":
            fdoc = files.read_json(candidate_dir(gen_dir, rec["id"]) / "fitness.json")
            fit = files.number(fdoc["fitness"])
            reason = fdoc["reason"] or rec["reason"]
        rows.append({"rec": rec, "fitness": fit, "reason": reason})
    here = {r["rec"]["id"]: r for r in rows}
    for r in rows:  # fitness reuse is resolved once this generation's evaluations are known
        src = r["rec"]["reuse_of"]
        if src is not None:
            r["fitness"] = here[src]["fitness"] if src in here else files.number(known[src]["fitness"])
    table = []
    for r in rows:
        rec, ind = r["rec"], population[r["rec"]["id"]]
        table.append({"id": rec["id"], "expression": rec["expression"], "origin": ind.origin,
                      "parents": " ".join(ind.parents), "key": rec["key"] or "", "decision": rec["decision"],
                      "reason": r["reason"] or "", "reuse_of": rec["reuse_of"] or "",
                      "fitness": r["fitness"]})
        if rec["decision"] in ("evaluate", "rejected"):
            new_entries.append({"id": rec["id"], "generation": generation, "expression": rec["expression"],
                                "key": rec["key"], "decision": rec["decision"], "fitness": r["fitness"],
                                "signature": rec["signature"]})
    frame = pd.DataFrame(table, columns=TABLE_COLUMNS)
    failpoint("gather")
    files.write_tsv(out_table, frame)
    entries = archive["entries"] + new_entries
    finite = [e for e in entries if e["decision"] == "evaluate" and math.isfinite(files.number(e["fitness"]))]
    best = min(finite, key=lambda e: (files.number(e["fitness"]), e["generation"]), default=None)
    files.write_json(out_archive, {"generation": generation, "entries": entries, "best": best})
    counts = frame["decision"].value_counts().to_dict()
    summary = {"generation": generation, "best_so_far": None if best is None else files.number(best["fitness"]),
               "best_expression": None if best is None else best["expression"],
               "generation_best": float(frame["fitness"].min()), "counts": counts,
               "seconds": time.perf_counter() - t0}
    record_seconds(out_table, "gather", summary["seconds"])
    best_text = "none yet" if best is None else f"{summary['best_so_far']:.4f}"
    line = (f"[gen {generation}] best so far {best_text} | {summary['best_expression'] or '-'} | "
            + ", ".join(f"{d} {counts.get(d, 0)}" for d in DECISIONS if counts.get(d, 0)))
    JobLog(log, echo=True)(line)
    return summary


# --------------------------------------------------------------------------- best loss
def select_best(archive_path, results_dir, out_path, *, exp: dict, log: str | None = None) -> None:
    """The best evaluated loss of the whole search, with its meta-learned weights."""
    from evomal.losses.compile import save_loss

    t0 = time.perf_counter()
    archive = files.read_json(archive_path)
    best = archive.get("best")
    if best is None:
        raise RuntimeError(f"{archive_path}: no candidate of the search reached a finite fitness; "
                           "nothing to meta-test (see the generations' fitness.tsv for the reasons)")
    cdir = candidate_dir(Path(results_dir) / f"gen_{best['generation']}", best["id"])
    kind = files.read_json(cdir / "loss.json")["kind"]
    opt = files.read_tensors(cdir / "optimized.pt")
    failpoint("best")
    save_loss(out_path, parse(best["expression"]), kind, opt["weights"], id=best["id"],
              generation=best["generation"], fitness=files.number(best["fitness"]), method=exp["method"])
    record_seconds(out_path, "best", time.perf_counter() - t0)
    JobLog(log, echo=True)(f"best loss {best['id']} (fitness {best['fitness']}): {best['expression']}")


# --------------------------------------------------------------------------- meta-testing and transfer
def _test_losses(loss_paths: dict, kind: str, device) -> dict:
    from evomal.losses.compile import baseline_loss, load_loss

    losses = {"baseline": baseline_loss(kind)}
    for method, path in loss_paths.items():
        loss = load_loss(path).to(device)
        if loss.kind != kind:
            raise ValueError(f"{path}: a {loss.kind} loss cannot train a {kind} task")
        losses[method] = loss
    return losses


def _run_meta_test(target: str, dataset, model, losses_by_path: dict, *, exp: dict, steps: int, device,
                   say) -> tuple[list[dict], dict]:
    from evomal.learning.training import meta_test

    task = load_task_for(dataset, seed=exp["seed"], device=device)
    build = model_factory(model, task, device)
    mt = exp["meta_test"]
    settings = TrainingSettings.from_config(exp["training"])
    losses = _test_losses(losses_by_path, task.kind, device)
    results = meta_test(losses, task, build, seeds=mt["seeds"], steps=steps, milestones=mt["milestones"],
                        gamma=mt["gamma"], eval_every=mt["eval_every"], **settings.optimizer_kwargs())
    metric = "error_rate" if task.kind == "classification" else "mse"
    rows, curves = [], {}
    for r in results:
        rows.append({"target": target, "method": r.method, "seed": r.seed, "test_metric": float(r.test_metric),
                     "metric": metric, "diverged": bool(r.diverged), "reason": r.reason or ""})
        curves[f"{r.method}/{r.seed}"] = r.curve
        say(f"{target} {r.method} seed {r.seed}: test {metric} {float(r.test_metric):.4f}")
    return rows, curves


def _target_name(dataset, model) -> str:
    return f"{component(dataset)[0]}/{component(model)[0]}"


def meta_test_stage(loss_paths: dict, out_table, out_summary, out_curves, *, exp: dict, device: str = "cpu",
                    log: str | None = None, threads: int = 1) -> None:
    """DESIGN §1.7: learned losses (method -> best/loss.json) against the baseline, same seeds."""
    use_threads(threads)
    from evomal.learning.statistics import summarize

    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="meta-test: ")
    dev = _device(device)
    rows, curves = _run_meta_test(_target_name(exp["dataset"], exp["model"]), exp["dataset"], exp["model"],
                                  loss_paths, exp=exp, steps=exp["meta_test"]["steps"], device=dev, say=say)
    frame = pd.DataFrame(rows, columns=PER_SEED_COLUMNS)
    failpoint("meta_test")
    files.write_tsv(out_table, frame)
    files.write_tsv(out_summary, summarize(frame))
    files.write_json(out_curves, {"curves": curves})
    record_seconds(out_table, "meta_test", time.perf_counter() - t0)


def transfer_stage(loss_paths: dict, out_table, out_summary, out_curves, *, exp: dict, device: str = "cpu",
                   log: str | None = None, threads: int = 1) -> None:
    """The same losses, unchanged, train every (dataset, model) target of the config."""
    use_threads(threads)
    from evomal.learning.statistics import summarize

    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="transfer: ")
    dev = _device(device)
    rows, curves = [], {}
    for target in exp["transfer"]:
        name = _target_name(target["dataset"], target["model"])
        r, c = _run_meta_test(name, target["dataset"], target["model"], loss_paths, exp=exp,
                              steps=target.get("steps", exp["meta_test"]["steps"]), device=dev, say=say)
        rows += r
        curves.update({f"{name}/{k}": v for k, v in c.items()})
    frame = pd.DataFrame(rows, columns=PER_SEED_COLUMNS)
    failpoint("transfer")
    files.write_tsv(out_table, frame)
    files.write_tsv(out_summary, summarize(frame))
    files.write_json(out_curves, {"curves": curves})
    record_seconds(out_table, "transfer", time.perf_counter() - t0)
