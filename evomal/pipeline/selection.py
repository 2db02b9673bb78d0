"""Selecting the result of a search (DESIGN §1.6a): finalists re-scored on validation, then the best loss.

With ``selection.finalists: 0`` the best loss is the best search fitness, as in the reference.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pandas as pd

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.core.workers import in_worker
from evomal.gp.expressions import parse
from evomal.learning.context import TrainingSettings, use_threads
from evomal.pipeline.contract import BASELINE, FINALIST_COLUMNS, candidate_dir, learned_beats_baseline
from evomal.pipeline.faults import failpoint
from evomal.pipeline.stage_inputs import learning_setup

def search_finalists(archive: dict, k: int) -> list[dict]:
    """The ``k`` best evaluated losses of the whole search with finite fitness, distinct expressions.

    Archive entries are already distinct by canonical key; ties break by generation, then id.
    """
    entries = [e for e in archive["entries"]
               if e["decision"] == "evaluate" and math.isfinite(files.number(e["fitness"]))]
    entries.sort(key=lambda e: (files.number(e["fitness"]), e["generation"], e["id"]))
    out, seen = [], set()
    for e in entries:
        if e["expression"] not in seen:
            seen.add(e["expression"])
            out.append(e)
        if len(out) == k:
            break
    return out


def _candidate_loss(results_dir, entry: dict, device):
    from evomal.losses.lossfile import load_loss

    cdir = candidate_dir(Path(results_dir) / f"gen_{entry['generation']}", entry["id"])
    loss = load_loss(cdir / "loss.json")
    loss.weights.data.copy_(files.read_tensors(cdir / "optimized.pt")["weights"])
    return loss.to(device)


def finalists_table(finalists: list[dict], scores, seeds) -> pd.DataFrame:
    """One row per finalist (the baseline first): per-seed validation metrics, mean, std, the choice."""
    by = {(s.name, s.seed): s for s in scores}
    rows = []
    for rank, e in enumerate([None] + finalists):
        name = BASELINE if e is None else e["id"]
        values = [by[(name, s)].metric for s in seeds]
        finite = all(math.isfinite(v) for v in values)  # a diverged seed disqualifies the finalist
        mean = statistics.fmean(values) if finite else math.inf
        std = (statistics.stdev(values) if len(values) > 1 else 0.0) if finite else math.nan
        reasons = sorted({by[(name, s)].reason for s in seeds if by[(name, s)].reason})
        rows.append({"rank": rank, "id": name, "generation": "" if e is None else e["generation"],
                     "expression": "" if e is None else e["expression"],
                     "search_fitness": math.nan if e is None else files.number(e["fitness"]),
                     **{f"seed_{s}": v for s, v in zip(seeds, values)},
                     "validation_mean": mean, "validation_std": std, "selected": False,
                     "reason": "; ".join(reasons)})
    frame = pd.DataFrame(rows, columns=FINALIST_COLUMNS[:5] + [f"seed_{s}" for s in seeds] + FINALIST_COLUMNS[5:])
    learned = frame[frame["id"] != BASELINE]
    if len(learned):
        # best mean validation metric; ties keep the better search fitness (lower rank)
        winner = learned.sort_values(["validation_mean", "rank"], kind="mergesort").index[0]
        frame.loc[winner, "selected"] = True
    return frame


@in_worker
def finalists_stage(archive_path, results_dir, out_table, *, exp: dict, device: str = "cpu",
                    log: str | None = None, threads: int = 1, batching: str = "off") -> None:
    """Train the finalists and the baseline from scratch over the validation seeds; write finalists.tsv."""
    use_threads(threads)
    from evomal.learning.batched import use_batching
    from evomal.learning.finalists import score_on_validation
    from evomal.losses.modules import baseline_loss

    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="finalists: ")
    archive = files.read_json(archive_path)
    sel, mt = exp["selection"], exp["meta_test"]
    finalists = search_finalists(archive, sel["finalists"])
    if not finalists:
        raise RuntimeError(f"{archive_path}: no candidate of the search reached a finite fitness; "
                           "nothing to select (see the generations' fitness.tsv for the reasons)")
    dev, task, build, _ = learning_setup(exp, device)
    settings = TrainingSettings.from_config(exp["training"])
    losses = {BASELINE: baseline_loss(task.kind)}
    losses.update({e["id"]: _candidate_loss(results_dir, e, dev) for e in finalists})
    steps = sel["steps"] or mt["steps"]
    scores = score_on_validation(losses, task, build, seeds=sel["seeds"], steps=steps,
                                 milestones=mt["milestones"], gamma=mt["gamma"],
                                 batched=use_batching(batching, build(0), dev), **settings.optimizer_kwargs())
    frame = finalists_table(finalists, scores, sel["seeds"])
    failpoint("finalists")
    files.write_tsv(out_table, frame)
    record_seconds(out_table, "finalists", time.perf_counter() - t0)
    for row in frame.itertuples():
        say(f"{row.id:>10}  validation {row.validation_mean:.4f} ± {row.validation_std:.4f}"
            f"{'  <- selected' if row.selected else ''}  {row.expression}")
    if not learned_beats_baseline(frame):
        say("no learned loss beats the baseline on validation; the best learned one is meta-tested anyway")


def chosen_entry(archive: dict, finalists_path) -> tuple[dict, dict]:
    """(archive entry, extra loss-file fields) of the loss to meta-test."""
    if finalists_path is None:
        return archive["best"], {}  # the reference's rule: the best loss file is as it was before finalists
    frame = files.read_tsv(finalists_path)
    row = frame[frame["selected"].astype(bool)]
    if len(row) != 1:
        raise files.ResultFileError(f"corrupted results file {finalists_path}: expected one selected finalist")
    cand_id = str(row["id"].iloc[0])
    entry = next(e for e in archive["entries"] if e["id"] == cand_id)
    return entry, {"selected_by": "finalists (mean validation metric)",
                   "validation_mean": float(row["validation_mean"].iloc[0]),
                   "beats_baseline_on_validation": learned_beats_baseline(frame)}


def selected_candidate(archive_path, results_dir, finalists=None) -> tuple[dict, dict, Path]:
    """(archive entry, extra loss-file fields, candidate folder) of the loss to meta-test."""
    archive = files.read_json(archive_path)
    if archive.get("best") is None:
        raise RuntimeError(f"{archive_path}: no candidate of the search reached a finite fitness; "
                           "nothing to meta-test (see the generations' fitness.tsv for the reasons)")
    best, extra = chosen_entry(archive, finalists)
    return best, extra, candidate_dir(Path(results_dir) / f"gen_{best['generation']}", best["id"])


def select_best(archive_path, results_dir, out_path, *, exp: dict, finalists=None, log: str | None = None) -> None:
    """The loss to meta-test, with its meta-learned weights: the selected finalist, or the best fitness."""
    from evomal.losses.lossfile import save_loss

    t0 = time.perf_counter()
    best, extra, cdir = selected_candidate(archive_path, results_dir, finalists)
    kind = files.read_json(cdir / "loss.json")["kind"]
    opt = files.read_tensors(cdir / "optimized.pt")
    failpoint("best")
    # the optimiser the weights were tuned for: a user trains with the same (README, `evomal show`)
    training = exp["training"]
    sgd = {k: training[k] for k in ("lr", "momentum", "nesterov", "weight_decay")}
    save_loss(out_path, parse(best["expression"]), kind, opt["weights"], id=best["id"],
              generation=best["generation"], fitness=files.number(best["fitness"]), method=exp["method"],
              **extra, sgd=sgd, batch_size=training["batch_size"])
    record_seconds(out_path, "best", time.perf_counter() - t0)
    JobLog(log, echo=True)(f"best loss {best['id']} (fitness {best['fitness']}): {best['expression']}")
