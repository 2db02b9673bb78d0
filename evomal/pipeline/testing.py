"""Meta-testing (DESIGN §1.7): learned losses against the baseline from scratch, and transfer."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.learning.context import TrainingSettings, load_task_for, model_factory, use_threads
from evomal.pipeline.contract import PER_SEED_COLUMNS
from evomal.pipeline.faults import failpoint
from evomal.pipeline.progress import seed_line
from evomal.pipeline.stage_inputs import resolve
from evomal.tasks.spec import component


def _test_losses(loss_paths: dict, kind: str, device, references=()) -> dict:
    """baseline, the references that apply to ``kind``, then the learned losses (method -> file)."""
    from evomal.losses.lossfile import load_loss
    from evomal.losses.modules import baseline_loss
    from evomal.losses.references import reference_losses

    losses = {"baseline": baseline_loss(kind), **reference_losses(references, kind)}
    for method, path in loss_paths.items():
        loss = load_loss(path).to(device)
        if loss.kind != kind:
            raise ValueError(f"{path}: a {loss.kind} loss cannot train a {kind} task")
        losses[method] = loss
    return losses


def _run_meta_test(target: str, dataset, model, losses_by_path: dict, *, exp: dict, steps: int, device,
                   say, batching: str = "off") -> tuple[list[dict], dict]:
    from evomal.learning.batched import use_batching
    from evomal.learning.meta_testing import meta_test

    task = load_task_for(dataset, seed=exp["seed"], device=device)
    build = model_factory(model, task, device)
    mt = exp["meta_test"]
    settings = TrainingSettings.from_config(exp["training"])
    losses = _test_losses(losses_by_path, task.kind, device, mt["references"])
    metric = "error_rate" if task.kind == "classification" else "mse"
    total = len(losses) * len(mt["seeds"])
    done = iter(range(1, total + 1))

    def finished(r) -> None:  # a line per run as it ends, not all of them when the stage ends
        say(seed_line(target=target, method=r.method, seed=r.seed, done=next(done), total=total, metric=metric,
                      value=float(r.test_metric), seconds=r.seconds))

    results = meta_test(losses, task, build, seeds=mt["seeds"], steps=steps, milestones=mt["milestones"],
                        gamma=mt["gamma"], eval_every=mt["eval_every"], on_result=finished,
                        batched=use_batching(batching, build(0), device),
                        **settings.optimizer_kwargs())
    rows, curves = [], {}
    for r in results:
        rows.append({"target": target, "method": r.method, "seed": r.seed, "test_metric": float(r.test_metric),
                     "metric": metric, "diverged": bool(r.diverged), "reason": r.reason or ""})
        curves[f"{r.method}/{r.seed}"] = r.curve
    return rows, curves


def _target_name(dataset, model) -> str:
    name, options = component(dataset)
    if name == "table" and options.get("path"):  # two tables must not share a name: use the file's
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(str(options["path"])).name)
    return f"{name}/{component(model)[0]}"


def _write_results(stage: str, rows: list[dict], curves: dict, out_table, out_summary, out_curves,
                   t0: float) -> None:
    """Per-seed table, its summary (paired tests against the baseline) and the learning curves."""
    from evomal.learning.statistics import summarize

    frame = pd.DataFrame(rows, columns=PER_SEED_COLUMNS)
    files.write_tsv(out_table, frame)
    files.write_tsv(out_summary, summarize(frame))
    files.write_json(out_curves, {"curves": curves})
    record_seconds(out_table, stage, time.perf_counter() - t0)


def meta_test_stage(loss_paths: dict, out_table, out_summary, out_curves, *, exp: dict, device: str = "cpu",
                    log: str | None = None, threads: int = 1, batching: str = "off") -> None:
    """DESIGN §1.7: learned losses (method -> best/loss.json) against the baseline, same seeds."""
    use_threads(threads)
    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="meta-test: ")
    dev = resolve(device)
    rows, curves = _run_meta_test(_target_name(exp["dataset"], exp["model"]), exp["dataset"], exp["model"],
                                  loss_paths, exp=exp, steps=exp["meta_test"]["steps"], device=dev, say=say,
                                  batching=batching)
    failpoint("meta_test")
    _write_results("meta_test", rows, curves, out_table, out_summary, out_curves, t0)


def transfer_stage(loss_paths: dict, out_table, out_summary, out_curves, *, exp: dict, device: str = "cpu",
                   log: str | None = None, threads: int = 1, batching: str = "off") -> None:
    """The same losses, unchanged, train every (dataset, model) target of the config."""
    use_threads(threads)
    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="transfer: ")
    dev = resolve(device)
    rows, curves = [], {}
    for target in exp["transfer"]:
        name = _target_name(target["dataset"], target["model"])
        r, c = _run_meta_test(name, target["dataset"], target["model"], loss_paths, exp=exp,
                              steps=target.get("steps", exp["meta_test"]["steps"]), device=dev, say=say,
                              batching=batching)
        rows += r
        curves.update({f"{name}/{k}": v for k, v in c.items()})
    failpoint("transfer")
    _write_results("transfer", rows, curves, out_table, out_summary, out_curves, t0)
