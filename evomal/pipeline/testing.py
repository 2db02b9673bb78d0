"""Meta-testing (DESIGN §1.7): learned losses against the baseline from scratch, and transfer.

Each (target, arm) is a job of its own (``arm_runs_stage``): the arms are the baseline, the references
and each learned loss, trained over the meta-test seeds. The baseline and reference arms do not depend
on any search, so the scheduler runs them on cores the search leaves idle; the meta-test and transfer
stages only put the arms' runs into their tables (``meta_test_stage``, ``transfer_stage``), in the
order one job running every loss would give (seed, then method).
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.core.workers import in_worker
from evomal.pipeline.contract import (BASELINE_ARM, LEARNED_PREFIX, META_TEST_TARGET, PER_SEED_COLUMNS,
                                     REFERENCES_ARM, target_spec)
from evomal.pipeline.faults import failpoint
from evomal.pipeline.progress import seed_line
from evomal.tasks.spec import component


def _learned_loss(path, kind: str, device):
    from evomal.losses.lossfile import load_loss

    loss = load_loss(path).to(device)
    if loss.kind != kind:
        raise ValueError(f"{path}: a {loss.kind} loss cannot train a {kind} task")
    return loss


def _test_losses(loss_paths: dict, kind: str, device, references=()) -> dict:
    """baseline, the references that apply to ``kind``, then the learned losses (method -> file)."""
    from evomal.losses.modules import baseline_loss
    from evomal.losses.references import reference_losses

    losses = {"baseline": baseline_loss(kind), **reference_losses(references, kind)}
    for method, path in loss_paths.items():
        losses[method] = _learned_loss(path, kind, device)
    return losses


@dataclass
class ArmRuns:
    """One arm's runs on one target (``test_runs/<target>-<arm>.json``): a row and a curve per run."""

    target: str  # the table's name of the target, e.g. "mnist1d/mlp"
    arm: str
    methods: list[str]  # in the tables' order; empty for references that do not apply to the task kind
    seeds: list[int]
    rows: list[dict] = field(default_factory=list)  # PER_SEED_COLUMNS
    curves: dict = field(default_factory=dict)  # "<method>/<seed>" -> [[step, train loss, val metric], ...]

    def row(self, method: str, seed: int) -> dict:
        return next(r for r in self.rows if r["method"] == method and r["seed"] == seed)


def _arm_losses(arm: str, kind: str, device, exp: dict, loss_path=None) -> dict:
    from evomal.losses.modules import baseline_loss
    from evomal.losses.references import reference_losses

    if arm == BASELINE_ARM:
        return {"baseline": baseline_loss(kind)}
    if arm == REFERENCES_ARM:
        return reference_losses(exp["meta_test"]["references"], kind)
    if arm.startswith(LEARNED_PREFIX) and loss_path is not None:
        return {arm[len(LEARNED_PREFIX):]: _learned_loss(loss_path, kind, device)}
    raise ValueError(f"unknown test arm {arm!r} (or a learned arm without its loss file): expected "
                     f"{BASELINE_ARM!r}, {REFERENCES_ARM!r} or {LEARNED_PREFIX}<method> with a loss file")


@in_worker
def arm_runs_stage(out_path, *, exp: dict, target: str, arm: str, loss=None, device: str = "cpu",
                   log: str | None = None, threads: int = 1, batching: str = "off") -> None:
    """One arm's losses train the target over the meta-test seeds, each scored on the test split."""
    from evomal.learning.batched import use_batching
    from evomal.learning.context import TrainingSettings, load_task_for, model_factory, use_threads
    from evomal.learning.meta_testing import meta_test
    from evomal.pipeline.stage_inputs import resolve

    use_threads(threads)
    t0 = time.perf_counter()
    spec = target_spec(exp, target)
    dataset, model, steps = spec["dataset"], spec["model"], spec["steps"]
    name = _target_name(dataset, model)
    stage = "meta-test" if target == META_TEST_TARGET else "transfer"
    say = JobLog(log, echo=True, prefix=f"{stage}: ")
    dev = resolve(device)
    task = load_task_for(dataset, seed=exp["seed"], device=dev)
    build = model_factory(model, task, dev)
    mt = exp["meta_test"]
    losses = _arm_losses(arm, task.kind, dev, exp, loss)
    metric = "error_rate" if task.kind == "classification" else "mse"
    total = len(losses) * len(mt["seeds"])
    done = iter(range(1, total + 1))

    def finished(r) -> None:  # a line per run as it ends, not all of them when the job ends
        say(seed_line(target=name, method=r.method, seed=r.seed, done=next(done), total=total, metric=metric,
                      value=float(r.test_metric), seconds=r.seconds))

    results = [] if not losses else meta_test(
        losses, task, build, seeds=mt["seeds"], steps=steps, milestones=mt["milestones"], gamma=mt["gamma"],
        eval_every=mt["eval_every"], on_result=finished, batched=use_batching(batching, build(0), dev),
        **TrainingSettings.from_config(exp["training"]).optimizer_kwargs())
    runs = ArmRuns(target=name, arm=arm, methods=list(losses), seeds=[int(s) for s in mt["seeds"]])
    for r in results:
        runs.rows.append({"target": name, "method": r.method, "seed": r.seed, "test_metric": float(r.test_metric),
                          "metric": metric, "diverged": bool(r.diverged), "reason": r.reason or ""})
        runs.curves[f"{r.method}/{r.seed}"] = r.curve
    if not losses:
        say(f"no reference of {mt['references']} applies to a {task.kind} task")
    failpoint("test_run")
    files.write_json(out_path, asdict(runs))
    record_seconds(out_path, f"test_run_{target}-{arm}", time.perf_counter() - t0)


def read_arm_runs(path) -> ArmRuns:
    doc = files.read_json(path)
    try:
        return ArmRuns(**doc)
    except TypeError as exc:
        raise files.ResultFileError(f"{path}: not a test-run file ({exc}); delete it to run it again") from None


def _assemble(arm_paths) -> tuple[str, list[dict], dict]:
    """The arms of one target as one job running every loss would list them: by seed, then method."""
    arms = [read_arm_runs(p) for p in arm_paths]
    seeds = arms[0].seeds
    for a, p in zip(arms, arm_paths):
        if a.seeds != seeds or a.target != arms[0].target:
            raise files.ResultFileError(f"{p}: ran {a.target} over seeds {a.seeds}, the other arms "
                                        f"{arms[0].target} over {seeds}; delete it to run it again")
    rows, curves = [], {}
    for seed in seeds:
        for a in arms:
            for method in a.methods:
                rows.append(a.row(method, seed))
                curves[f"{method}/{seed}"] = a.curves[f"{method}/{seed}"]
    return arms[0].target, rows, curves


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


def meta_test_stage(arm_paths, out_table, out_summary, out_curves, *, log: str | None = None) -> None:
    """DESIGN §1.7: the arms' runs on the experiment's own task (test_runs/meta_test-<arm>.json)."""
    t0 = time.perf_counter()
    _, rows, curves = _assemble(arm_paths)
    failpoint("meta_test")
    _write_results("meta_test", rows, curves, out_table, out_summary, out_curves, t0)
    JobLog(log)(f"meta-test: {len(rows)} runs from {len(arm_paths)} arms")


def transfer_stage(arm_paths_by_target: dict, out_table, out_summary, out_curves, *,
                   log: str | None = None) -> None:
    """The same losses, unchanged, on every (dataset, model) target of the config (transfer_<i>-<arm>)."""
    t0 = time.perf_counter()
    rows, curves = [], {}
    for paths in arm_paths_by_target.values():
        name, r, c = _assemble(paths)
        rows += r
        curves.update({f"{name}/{k}": v for k, v in c.items()})
    failpoint("transfer")
    _write_results("transfer", rows, curves, out_table, out_summary, out_curves, t0)
    JobLog(log)(f"transfer: {len(rows)} runs on {len(arm_paths_by_target)} targets")
