"""Throughput features: the shared local-search plan (bitwise the same results) and early stopping of
hopeless candidates (off: the same files as without the feature; on: stopped with a reason)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from evomal.core import files
from evomal.gp.expressions import parse
from evomal.learning.early_stop import EarlyStop, ScoreBoard
from evomal.learning.plan import LocalSearchPlan
from evomal.learning.training import fitness, unrolled_local_search
from evomal.losses.modules import CompiledLoss, initial_weights
from evomal.pipeline.candidates import compile_shard, evaluate_shard, optimize_shard
from evomal.pipeline.config import ConfigError, resolve_config
from evomal.pipeline.early_stopping import early_stop_board
from evomal.tasks.models import build_model, reinitialize

from workflow_utils import tiny_config

SETTINGS = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=64)
CANDIDATES = ["mul(-1, mul(y, log(f)))", "add(mul(-1, mul(y, log(f))), square(sub(f, y)))",
              "aq(sub(f, y), tanh(add(y, f)))"]


def _mlp(task, seed=0):
    return build_model("mlp", task.input_shape, task.num_outputs, seed=seed, hidden=[32, 32])


def _bn_net(task, seed=0):
    """A network with buffers (batch-norm statistics), which a meta step updates in place."""
    net = nn.Sequential(nn.Linear(task.input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, task.num_outputs))
    reinitialize(net, seed)
    return net


def _loss(expr: str, seed: int) -> CompiledLoss:
    tree = parse(expr)
    return CompiledLoss(tree, "classification", initial_weights(tree, seed=seed))


# --------------------------------------------------------------------------- the shared plan
@pytest.mark.parametrize("make_net", [_mlp, _bn_net], ids=["mlp", "batchnorm"])
@pytest.mark.parametrize("stored", [None, 2], ids=["all-steps-stored", "two-stored"])
def test_a_shared_plan_gives_bitwise_the_same_local_search(digits, make_net, stored):
    steps, inner = 6, 2
    args = dict(steps=steps, inner_steps=inner, seed=3, meta_lr=1e-2, reinit=reinitialize, **SETTINGS)
    shared_model = make_net(digits, seed=0)
    per_state = sum(t.numel() * t.element_size() for t in [*shared_model.parameters(), *shared_model.buffers()])
    max_bytes = (1 << 40) if stored is None else stored * per_state
    plan = LocalSearchPlan.build(digits, shared_model, steps=steps, inner_steps=inner, batch_size=64, seed=3,
                                 reinit=reinitialize, max_bytes=max_bytes)
    assert len(plan.states) == (steps if stored is None else stored)
    for i, expr in enumerate(CANDIDATES):
        alone_model = make_net(digits, seed=0)
        alone = unrolled_local_search(_loss(expr, i), digits, alone_model, **args)
        shared = unrolled_local_search(_loss(expr, i), digits, shared_model, plan=plan, **args)
        assert alone.status == shared.status == "ok"
        assert torch.equal(alone.weights, shared.weights), expr
        assert alone.curve == shared.curve and len(alone.curve) == steps
        # the network's buffers (batch-norm statistics) end as they do without the plan, too
        for (name, a), (_, b) in zip(alone_model.named_buffers(), shared_model.named_buffers()):
            assert torch.equal(a, b), name


def test_the_plan_is_never_written_to_and_checks_its_settings(digits):
    model = _mlp(digits)
    plan = LocalSearchPlan.build(digits, model, steps=4, batch_size=64, seed=1)
    before = [{n: t.clone() for n, t in s.items()} for s in plan.states]
    for i, expr in enumerate(CANDIDATES):
        unrolled_local_search(_loss(expr, i), digits, model, steps=4, seed=1, plan=plan, **SETTINGS)
    assert all(torch.equal(s[n], b[n]) for s, b in zip(plan.states, before) for n in s)
    with pytest.raises(ValueError, match="local-search plan built for"):
        unrolled_local_search(_loss(CANDIDATES[0], 0), digits, model, steps=4, seed=2, plan=plan, **SETTINGS)
    with pytest.raises(ValueError, match="local-search plan built for"):
        unrolled_local_search(_loss(CANDIDATES[0], 0), digits, model, steps=5, seed=1, plan=plan, **SETTINGS)


# --------------------------------------------------------------------------- early stopping: the rule
def test_median_rule():
    board = ScoreBoard(EarlyStop(checkpoints=(0.25, 0.5), min_scored=3), total_steps=200)
    assert board.steps == (50, 100)
    board.add([(50, 0.4), (100, 0.3)])
    board.add([(50, 0.6)])
    assert board.verdict(50, 9.0) is None  # two scored: fewer than min_scored
    board.add([(50, 0.5), (100, 0.2), (7, 0.0)])
    assert board.verdict(50, 0.5) is None  # a tie with the median trains on
    assert board.verdict(50, 0.45) is None
    assert board.verdict(50, 0.51) == ("stopped early at step 50: metric 0.51 worse than the median 0.5 of "
                                       "3 scored candidates")
    assert board.verdict(100, 1.0) is None  # two scored at step 100
    assert board.snapshot() == {"50": [0.4, 0.6, 0.5], "100": [0.3, 0.2]}


def test_early_stop_config_is_validated_and_off_by_default():
    exp = resolve_config(tiny_config())["experiments"]["tiny"]
    assert exp["early_stop"] == {"enabled": False, "checkpoints": [0.25, 0.5], "rule": "median", "min_scored": 3}
    assert EarlyStop.from_config(exp["early_stop"]) is None
    with pytest.raises(ConfigError, match="early_stop.rule"):
        resolve_config(tiny_config(early_stop={"enabled": True, "rule": "halving"}))
    with pytest.raises(ConfigError, match="early_stop.checkpoints"):
        resolve_config(tiny_config(early_stop={"checkpoints": [1.0]}))


def test_checkpoints_do_not_change_training(digits):
    """A board that never stops (nothing scored yet) records checkpoints; the training is the same."""
    loss = _loss(CANDIDATES[1], 0)
    plain = fitness(loss, digits, _mlp(digits), steps=40, seed=0, **SETTINGS)
    board = ScoreBoard(EarlyStop(checkpoints=(0.25, 0.5)), 40)
    watched = fitness(loss, digits, _mlp(digits), steps=40, seed=0, early_stop=board, **SETTINGS)
    assert watched.fitness == plain.fitness and watched.curve == plain.curve and watched.reason is None
    assert [s for s, _ in watched.checkpoints] == [10, 20] and watched.stopped_at is None
    assert plain.checkpoints == [] and plain.stopped_at is None


# --------------------------------------------------------------------------- early stopping: the stage
GOOD = ["mul(-1, mul(y, log(f)))", "mul(-1, mul(y, log(add(f, f))))", "mul(-1, mul(y, log(mul(f, f))))",
        "square(sub(f, y))"]
BAD = "mul(-1, mul(f, square(y)))"  # pushes the true class's probability down: hopeless


def _generation(tmp_path, exp, exprs, name="gen_0"):
    """A generation folder with one shard of candidates, compiled and optimised."""
    gen = tmp_path / name
    doc = {"candidates": [{"id": f"c{i}", "expression": e, "decision": "evaluate", "shard": 0}
                          for i, e in enumerate(exprs)]}
    files.write_json(gen / "filter.json", doc)
    compile_shard(gen / "filter.json", 0, gen / "shards" / "compile_0.json", exp=exp)
    optimize_shard(gen / "filter.json", 0, gen / "shards" / "optimize_0.json", exp=exp)
    return gen


def _fitness_files(gen) -> dict[str, bytes]:
    """fitness.json of each candidate, without its wall-clock timings."""
    out = {}
    for path in sorted((gen / "candidates").glob("*/fitness.json")):
        doc = json.loads(path.read_text())
        del doc["timings"]
        out[path.parent.name] = json.dumps(doc).encode()
    return out


def _tiny_exp(**early_stop):
    config = tiny_config(training={"steps": 40, "lr": 0.05, "momentum": 0.9, "batch_size": 64},
                         local_search={"meta_steps": 2})
    if early_stop:
        config["experiments"]["tiny"]["early_stop"] = early_stop
    return resolve_config(config)["experiments"]["tiny"]


@pytest.fixture
def torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_early_stopping_off_writes_the_files_of_today(tmp_path, torch_threads):
    """`early_stop.enabled: false` and a config without the key at all give the same files (wall-clock
    timings aside), fingerprints included."""
    exp_off = _tiny_exp(enabled=False, checkpoints=[0.5], min_scored=1)
    exp_absent = copy.deepcopy(exp_off)
    del exp_absent["early_stop"]
    out = {}
    for label, exp in (("off", exp_off), ("absent", exp_absent)):
        gen = _generation(tmp_path / label, exp, GOOD[:2] + [BAD])
        evaluate_shard(gen / "filter.json", 0, gen / "shards" / "evaluate_0.json", exp=exp)
        out[label] = _fitness_files(gen)
    assert out["off"] == out["absent"] and len(out["off"]) == 3
    assert all(b"checkpoints" not in b and b"stopped" not in b for b in out["off"].values())


def test_early_stopping_stops_a_hopeless_candidate_with_its_reason(tmp_path, torch_threads):
    on = _tiny_exp(enabled=True, checkpoints=[0.25, 0.5], min_scored=2)
    off = _tiny_exp()
    gens = {}
    for label, exp in (("on", on), ("off", off)):
        gens[label] = gen = _generation(tmp_path / label, exp, GOOD[:3] + [BAD])
        evaluate_shard(gen / "filter.json", 0, gen / "shards" / "evaluate_0.json", exp=exp)
    docs = {label: {c: json.loads(b) for c, b in _fitness_files(g).items()} for label, g in gens.items()}
    stopped = docs["on"]["c3"]
    assert files.number(stopped["fitness"]) == math.inf and stopped["stopped_at"] == 10
    assert stopped["reason"].startswith("stopped early at step 10: metric ")
    assert "worse than the median" in stopped["reason"] and "of 3 scored candidates" in stopped["reason"]
    assert math.isfinite(files.number(docs["off"]["c3"]["fitness"]))  # trained to the end without the rule
    for cid in ("c0", "c1", "c2"):  # the candidates that train on score exactly as without the rule
        assert docs["on"][cid]["stopped_at"] is None and [s for s, _ in docs["on"][cid]["checkpoints"]] == [10, 20]
        assert docs["on"][cid]["fitness"] == docs["off"][cid]["fitness"]
        assert docs["on"][cid]["curve"] == docs["off"][cid]["curve"]
    # a rerun of the job rebuilds the same board from the files and reuses every candidate
    before = {p: p.read_bytes() for p in (gens["on"] / "candidates").glob("*/fitness.json")}
    evaluate_shard(gens["on"] / "filter.json", 0, tmp_path / "again.json", exp=on)
    assert json.loads((tmp_path / "again.json").read_text())["reused"] == ["c0", "c1", "c2", "c3"]
    assert {p: p.read_bytes() for p in before} == before


def test_the_board_of_a_later_generation_holds_the_archive(tmp_path):
    exp = _tiny_exp(enabled=True, checkpoints=[0.25, 0.5], min_scored=1)
    for cid, points in (("a", [[10, 0.5], [20, 0.4]]), ("b", [[10, 0.7]]), ("r", None)):
        doc = {"fitness": 0.3} if points is None else {"fitness": 0.3, "checkpoints": points}
        files.write_json(tmp_path / "gen_0" / "candidates" / cid / "fitness.json", doc)
    entries = [{"id": "a", "generation": 0, "decision": "evaluate"},
               {"id": "b", "generation": 0, "decision": "evaluate"},
               {"id": "x", "generation": 0, "decision": "rejected"},  # never trained: no fitness.json
               {"id": "r", "generation": 0, "decision": "evaluate"}]  # scored with early stopping off
    files.write_json(tmp_path / "gen_0" / "archive.json", {"generation": 0, "entries": entries})
    board = early_stop_board(exp, 40, tmp_path / "gen_0" / "archive.json")
    assert board.snapshot() == {"10": [0.5, 0.7], "20": [0.4]}
    assert early_stop_board(_tiny_exp(), 40, tmp_path / "gen_0" / "archive.json") is None


@pytest.mark.slow
def test_a_search_with_early_stopping_through_snakemake(tmp_path):
    """The evaluate rule hands the previous archive to the board from generation 1 on; a rerun has nothing to do."""
    from workflow_utils import snakemake, write_config

    write_config(tmp_path, tiny_config(early_stop={"enabled": True, "min_scored": 1}))
    snakemake(tmp_path, "results/tiny/gen_1/fitness.tsv")
    exp_dir = tmp_path / "results" / "tiny"
    docs = [json.loads(p.read_text()) for p in sorted(exp_dir.glob("gen_*/candidates/*/fitness.json"))]
    assert docs and all("checkpoints" in d and "stopped_at" in d for d in docs)
    stopped = [d for d in docs if d["stopped_at"] is not None]
    assert stopped and all(d["reason"].startswith("stopped early at step ") for d in stopped)
    table = (exp_dir / "gen_1" / "fitness.tsv").read_text() + (exp_dir / "gen_0" / "fitness.tsv").read_text()
    assert "stopped early at step" in table
    # a stopped candidate of generation 1 was compared with more candidates than its shard had scored
    # before it: generation 0's, from the archive
    members = [c for c in json.loads((exp_dir / "gen_1" / "filter.json").read_text())["candidates"]
               if c["decision"] == "evaluate"]
    judged = 0
    for c in members:
        doc = json.loads((exp_dir / "gen_1" / "candidates" / c["id"] / "fitness.json").read_text())
        if doc["stopped_at"] is not None:
            before = [m for m in members if m["shard"] == c["shard"]]
            earlier = before[:[m["id"] for m in before].index(c["id"])]
            assert int(doc["reason"].split(" of ")[-1].split()[0]) > len(earlier), doc["reason"]
            judged += 1
    assert judged
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "results/tiny/gen_1/fitness.tsv").stdout
