"""The finalists trained in parts (one job per shard): the same finalists.tsv as one job training every
loss, on the validation split, with stacked groups or one network at a time."""
from __future__ import annotations

import pytest
import torch

from evomal.core import files
from evomal.gp.expressions import parse
from evomal.learning.context import TrainingSettings, load_task_for, model_factory
from evomal.learning.finalists import score_on_validation
from evomal.losses.lossfile import load_loss, save_loss
from evomal.losses.modules import baseline_loss
from evomal.pipeline.config import resolve_config
from evomal.pipeline.contract import BASELINE, candidate_dir, finalist_parts, finalist_scores_file
from evomal.pipeline.selection import (finalist_names, finalist_scores_stage, finalists_stage, finalists_table,
                                       read_finalist_scores)
from workflow_utils import tiny_config

EXPRESSIONS = ["mul(-1, mul(add(y, 1), log(f)))", "square(sub(y, f))", "mul(-1, mul(y, log(f)))",
               "abs(sub(y, f))"]


@pytest.fixture
def search(tmp_path):
    """A finished search's archive and candidate files: four evaluated losses with their tuned weights."""
    exp = resolve_config(tiny_config(selection={"finalists": 4, "seeds": [100, 101, 102], "steps": 40}))
    exp = exp["experiments"]["tiny"]
    entries = []
    for i, text in enumerate(EXPRESSIONS):
        tree = parse(text)
        cdir = candidate_dir(tmp_path / "gen_0", f"g0-{i:03d}")
        save_loss(cdir / "loss.json", tree, "classification", [1.0] * tree.num_edges)
        weights = torch.linspace(0.9, 1.1, tree.num_edges)  # tuned weights: the finalists must use them
        files.write_tensors(cdir / "optimized.pt", {"weights": weights})
        entries.append({"id": f"g0-{i:03d}", "generation": 0, "expression": text, "key": text,
                        "decision": "evaluate", "fitness": 0.5 - 0.01 * i, "signature": None})
    archive = tmp_path / "archive.json"
    files.write_json(archive, {"entries": entries})
    return exp, archive, entries


def _table(tmp_path, exp, archive, parts: int, batching: str, name: str) -> bytes:
    paths = []
    for part in range(parts):
        path = tmp_path / name / finalist_scores_file(part)
        finalist_scores_stage(archive, tmp_path, path, exp=exp, part=part, parts=parts, batching=batching)
        paths.append(path)
    out = tmp_path / name / "finalists.tsv"
    finalists_stage(archive, paths, out, exp=exp)
    return out.read_bytes()


@pytest.mark.parametrize("batching", ["on", "off"])
def test_parts_give_the_table_of_one_job_training_every_loss(tmp_path, search, batching):
    exp, archive, entries = search
    tables = {parts: _table(tmp_path, exp, archive, parts, batching, f"p{parts}") for parts in (1, 2, 3)}
    assert tables[1] == tables[2] == tables[3]  # bytes: the parts change no score

    # and the one job is the whole of the finalists and the baseline trained together on validation
    task = load_task_for(exp["dataset"], seed=exp["seed"], device=torch.device("cpu"))
    build = model_factory(exp["model"], task, torch.device("cpu"))
    losses = {BASELINE: baseline_loss(task.kind)}
    for e in sorted(entries, key=lambda e: e["fitness"]):
        cdir = candidate_dir(tmp_path / "gen_0", e["id"])
        loss = load_loss(cdir / "loss.json")
        loss.weights.data.copy_(files.read_tensors(cdir / "optimized.pt")["weights"])
        losses[e["id"]] = loss
    sel = exp["selection"]
    scores = score_on_validation(losses, task, build, seeds=sel["seeds"], steps=sel["steps"],
                                 milestones=exp["meta_test"]["milestones"], gamma=exp["meta_test"]["gamma"],
                                 batched=batching == "on",
                                 **TrainingSettings.from_config(exp["training"]).optimizer_kwargs())
    whole = tmp_path / "whole.tsv"
    files.write_tsv(whole, finalists_table(sorted(entries, key=lambda e: e["fitness"]), scores, sel["seeds"]))
    assert whole.read_bytes() == tables[1]


def test_the_losses_are_dealt_round_robin_and_every_one_is_trained_once(search):
    exp, _, entries = search
    finalists = sorted(entries, key=lambda e: e["fitness"])
    names = [BASELINE] + [e["id"] for e in finalists]
    for parts in (1, 2, 3, 7):
        dealt = [finalist_names(finalists, k, parts) for k in range(parts)]
        assert sorted(n for d in dealt for n in d) == sorted(names)
        assert dealt[0][0] == BASELINE
    assert finalist_parts(exp, shards=2) == 2
    assert finalist_parts(exp, shards=16) == 5  # at most one job per loss: four finalists and the baseline
    assert finalist_parts(exp, shards=1) == 1


def test_a_part_with_other_losses_or_seeds_is_refused(tmp_path, search):
    exp, archive, entries = search
    path = tmp_path / finalist_scores_file(0)
    finalist_scores_stage(archive, tmp_path, path, exp=exp, part=0, parts=2)
    finalists = sorted(entries, key=lambda e: e["fitness"])
    names = finalist_names(finalists, 0, 2)
    assert len(read_finalist_scores(path, names, [100, 101, 102])) == 3 * len(names)
    with pytest.raises(files.ResultFileError, match="expected"):
        read_finalist_scores(path, finalist_names(finalists, 1, 2), [100, 101, 102])  # the other part's losses
    with pytest.raises(files.ResultFileError, match="expected"):
        read_finalist_scores(path, names, [100, 101])  # other seeds
    with pytest.raises(files.ResultFileError, match="expected"):  # a table over three parts reads part 0 of two
        finalists_stage(archive, [path, path, path], tmp_path / "finalists.tsv", exp=exp)
