"""Selecting the result of a search (DESIGN §1.6a): finalists re-scored on validation, then the best loss.

With ``selection.finalists: 0`` the best loss is the best search fitness, as in the reference.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.core.workers import in_worker
from evomal.gp.expressions import parse
from evomal.learning.context import use_threads
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


def _finalists(archive_path, exp: dict) -> list[dict]:
    finalists = search_finalists(files.read_json(archive_path), exp["selection"]["finalists"])
    if not finalists:
        raise RuntimeError(f"{archive_path}: no candidate of the search reached a finite fitness; "
                           "nothing to select (see the generations' fitness.tsv for the reasons)")
    return finalists


def finalist_names(finalists: list[dict], part: int, parts: int) -> list[str]:
    """The losses of one finalists job: the baseline, then the finalists, dealt round-robin over ``parts``."""
    return ([BASELINE] + [e["id"] for e in finalists])[part::parts]


@in_worker
def finalist_scores_stage(archive_path, results_dir, out_path, *, exp: dict, part: int, parts: int,
                          device: str = "cpu", log: str | None = None, threads: int = 1,
                          batching: str = "off") -> None:
    """One part of the finalists and the baseline (finalist_names), each trained from scratch over the
    validation seeds and scored on the validation split: ``finalist_scores/part_<part>.json``. A run's
    score does not depend on which runs train beside it (stacked groups included: tests/test_finalist_parts.py),
    so the parts give the scores of one job, on as many cores as there are parts."""
    use_threads(threads)
    from evomal.learning.batched import use_batching
    from evomal.learning.finalists import score_on_validation
    from evomal.losses.modules import baseline_loss

    t0 = time.perf_counter()
    finalists = _finalists(archive_path, exp)
    names, mt = finalist_names(finalists, part, parts), exp["meta_test"]
    dev, task, build, settings = learning_setup(exp, device)
    by_id = {e["id"]: e for e in finalists}
    losses = {n: baseline_loss(task.kind) if n == BASELINE else _candidate_loss(results_dir, by_id[n], dev)
              for n in names}
    scores = [] if not losses else score_on_validation(
        losses, task, build, seeds=exp["selection"]["seeds"], steps=exp["selection"]["steps"] or mt["steps"],
        milestones=mt["milestones"], gamma=mt["gamma"], batched=use_batching(batching, build(0), dev),
        **settings.optimizer_kwargs())
    failpoint("finalists")
    files.write_json(out_path, {"part": int(part), "scores": [asdict(v) for v in scores]})
    seconds = time.perf_counter() - t0
    record_seconds(out_path, f"finalists_part_{part}", seconds)
    JobLog(log)(f"part {part} of {parts}: {names}, {len(scores)} runs in {seconds:.1f}s")


def read_finalist_scores(path, names: list[str], seeds: list[int]) -> list:
    """The scores of a ``finalist_scores/part_<k>.json``: each of ``names`` for each seed (seed-major),
    or ResultFileError."""
    from evomal.learning.finalists import ValidationScore

    doc = files.read_json(path)
    try:
        scores = [ValidationScore(d["name"], int(d["seed"]), files.number(d["metric"]), d["reason"])
                  for d in doc["scores"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise files.ResultFileError(f"corrupted results file {path}: {exc!r}") from None
    expected = [(n, int(s)) for s in seeds for n in names]
    if [(v.name, v.seed) for v in scores] != expected:
        raise files.ResultFileError(f"{path}: scores of {[(v.name, v.seed) for v in scores]}, expected "
                                    f"{expected}; delete the file to train it again")
    return scores


def finalists_stage(archive_path, score_paths, out_table, *, exp: dict, log: str | None = None) -> None:
    """finalists.tsv from the scores of the finalists' parts (finalist_scores_stage), one per path."""
    t0 = time.perf_counter()
    say = JobLog(log, echo=True, prefix="finalists: ")
    finalists, seeds = _finalists(archive_path, exp), exp["selection"]["seeds"]
    scores = [v for part, path in enumerate(score_paths)
              for v in read_finalist_scores(path, finalist_names(finalists, part, len(score_paths)), seeds)]
    frame = finalists_table(finalists, scores, seeds)
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
