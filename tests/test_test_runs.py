"""Meta-test and transfer as one job per (target, arm): the same tables as one job training every loss,
the test split and the meta-test seeds per arm, and baseline / reference arms that need no search."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from evomal.core import files
from evomal.gp.expressions import parse
from evomal.learning.context import TrainingSettings, load_task_for, model_factory
from evomal.learning.meta_testing import meta_test
from evomal.losses.lossfile import load_loss, save_loss
from evomal.pipeline.config import resolve_config
from evomal.pipeline import contract
from evomal.pipeline.contract import target_spec
from evomal.pipeline.testing import (ArmRuns, meta_test_stage, read_arm_runs, arm_runs_stage,
                                     transfer_stage)
from workflow_utils import dry_run_jobs, snakemake, tiny_config, write_config

LEARNED = "mul(-1, mul(add(y, 1), log(f)))"


@pytest.fixture
def exp():
    cfg = tiny_config(meta_test={"steps": 30, "seeds": [3, 1], "eval_every": 10,
                                 "references": ["label_smoothing", "huber"]},
                      transfer=[{"dataset": "wine", "model": "linear", "steps": 20},
                                {"dataset": "diabetes", "model": "linear", "steps": 20}])
    return resolve_config(cfg)["experiments"]["tiny"]


@pytest.fixture
def loss_file(tmp_path):
    path = tmp_path / "best" / "loss.json"
    tree = parse(LEARNED)
    save_loss(path, tree, "classification", [1.0] * tree.num_edges)
    return path


def _arms(tmp_path, exp, target, loss_file):
    out = []
    for arm in ("baseline", "references", "learned-evomal"):
        path = tmp_path / "test_runs" / f"{target}-{arm}.json"
        arm_runs_stage(path, exp=exp, target=target, arm=arm, loss=loss_file if arm.startswith("learned") else None)
        out.append(path)
    return out


def test_the_arms_give_the_table_of_one_job_training_every_loss(tmp_path, exp, loss_file):
    """Row order (seed, then method), values and curves equal one meta_test call over all the losses."""
    paths = _arms(tmp_path, exp, "meta_test", loss_file)
    meta_test_stage(paths, tmp_path / "mt.tsv", tmp_path / "mts.tsv", tmp_path / "mtc.json")
    table = pd.read_csv(tmp_path / "mt.tsv", sep="\t")

    task = load_task_for(exp["dataset"], seed=exp["seed"], device=torch.device("cpu"))
    build = model_factory(exp["model"], task, torch.device("cpu"))
    from evomal.losses.modules import baseline_loss
    from evomal.losses.references import reference_losses

    losses = {"baseline": baseline_loss("classification"),
              **reference_losses(["label_smoothing", "huber"], "classification"), "evomal": load_loss(loss_file)}
    mt = exp["meta_test"]
    whole = meta_test(losses, task, build, seeds=mt["seeds"], steps=mt["steps"], milestones=mt["milestones"],
                      gamma=mt["gamma"], eval_every=mt["eval_every"],
                      **TrainingSettings.from_config(exp["training"]).optimizer_kwargs())
    assert list(zip(table.seed, table.method)) == [(r.seed, r.method) for r in whole]
    assert list(zip(table.seed, table.method))[:3] == [(3, "baseline"), (3, "label_smoothing"), (3, "evomal")]
    assert table.test_metric.tolist() == [r.test_metric for r in whole]  # bitwise: the test split, same seeds
    curves = files.read_json(tmp_path / "mtc.json")["curves"]
    assert list(curves) == [f"{r.method}/{r.seed}" for r in whole]
    assert curves["evomal/1"] == json.loads(files.dumps_json(whole[-1].curve))  # nan as the writer spells it


def test_transfer_targets_keep_their_own_steps_and_skip_references_of_the_other_kind(tmp_path, exp):
    assert target_spec(exp, "transfer_0")["steps"] == 20 and target_spec(exp, "meta_test")["steps"] == 30
    with pytest.raises(ValueError, match="unknown test target 'transfer_2'"):
        target_spec(exp, "transfer_2")
    by_target = {}
    for i in (0, 1):
        target = f"transfer_{i}"
        by_target[target] = []
        for arm in ("baseline", "references"):
            path = tmp_path / "test_runs" / f"{target}-{arm}.json"
            arm_runs_stage(path, exp=exp, target=target, arm=arm)
            by_target[target].append(path)
    assert read_arm_runs(by_target["transfer_0"][1]).methods == ["label_smoothing"]  # wine: classification
    assert read_arm_runs(by_target["transfer_1"][1]).methods == ["huber"]  # diabetes: regression
    transfer_stage(by_target, tmp_path / "t.tsv", tmp_path / "ts.tsv", tmp_path / "tc.json")
    table = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert list(table.target.unique()) == ["wine/linear", "diabetes/linear"]
    assert set(table[table.target == "diabetes/linear"].metric) == {"mse"}
    curves = files.read_json(tmp_path / "tc.json")["curves"]
    assert "diabetes/linear/huber/3" in curves and "wine/linear/label_smoothing/1" in curves


def test_arms_of_different_seeds_are_refused(tmp_path):
    for arm, seeds in (("baseline", [0, 1]), ("learned-evomal", [0])):
        files.write_json(tmp_path / f"{arm}.json", ArmRuns("d/m", arm, [arm], seeds).__dict__)
    with pytest.raises(files.ResultFileError, match="over seeds \\[0\\]"):
        meta_test_stage([tmp_path / "baseline.json", tmp_path / "learned-evomal.json"], tmp_path / "a.tsv",
                        tmp_path / "b.tsv", tmp_path / "c.json")


def test_a_learned_arm_needs_its_loss_file(tmp_path, exp):
    with pytest.raises(ValueError, match="learned arm without its loss file"):
        arm_runs_stage(tmp_path / "x.json", exp=exp, target="meta_test", arm="learned-evomal")


def test_baseline_and_reference_arms_need_no_search(tmp_path):
    """On a fresh folder, the baseline and reference runs are jobs of their own, with no search job
    upstream: the scheduler can run them while the search runs."""
    write_config(tmp_path, tiny_config())
    targets = ["results/tiny/test_runs/meta_test-baseline.json", "results/tiny/test_runs/transfer_0-references.json"]
    dry = snakemake(tmp_path, "-n", *targets)
    table = dry.stdout + dry.stderr
    assert "test_run" in table
    for rule in ("population", "filter", "optimize", "evaluate", "best", "finalist_scores", "finalists"):
        assert f"\n{rule} " not in table, table
    learned = snakemake(tmp_path, "-n", "results/tiny/test_runs/meta_test-learned-evomal.json")
    assert "\nbest " in learned.stdout + learned.stderr


def test_learned_arms_come_first_then_the_longest(exp):
    """The scheduler's order of the test runs: below the search's and its bookkeeping's, the learned arms first (they
    wait for the search and end the run), then by training steps; ties keep the targets' order."""
    arms = ["baseline", "references", "learned-evomal"]
    prio = {(t, a): contract.test_run_priority(exp, arms, t, a) for t in contract.test_targets(exp) for a in arms}
    assert all(0 < p < contract.BOOKKEEPING_PRIORITY for p in prio.values()) and len(set(prio.values())) == len(prio)
    ranked = sorted(prio, key=prio.get, reverse=True)
    # meta_test trains 30 steps, each transfer target 20; the references arm trains two losses
    assert ranked == [("meta_test", "learned-evomal"), ("transfer_0", "learned-evomal"),
                      ("transfer_1", "learned-evomal"), ("meta_test", "references"), ("transfer_0", "references"),
                      ("transfer_1", "references"), ("meta_test", "baseline"), ("transfer_0", "baseline"),
                      ("transfer_1", "baseline")]


def test_the_scheduler_gets_the_test_run_priorities(tmp_path):
    """A dry run shows each test_run job's priority from test_run_priority, and the search's for the search's jobs."""
    write_config(tmp_path, tiny_config())
    arms = ["baseline", "references", "learned-evomal"]
    targets = [f"results/tiny/test_runs/{t}-{a}.json" for t in ("meta_test", "transfer_0") for a in arms]
    dry = snakemake(tmp_path, "-n", "--quiet", "host", "--", *targets)
    jobs = dry_run_jobs(dry.stdout + dry.stderr)
    exp = resolve_config(tiny_config())["experiments"]["tiny"]
    run_arms = [a for a in arms if a != "references" or exp["meta_test"]["references"]]
    got = {(w["target"], w["arm"]): p for w, p in jobs["test_run"]}
    assert got == {(t, a): pytest.approx(contract.test_run_priority(exp, run_arms, t, a))
                   for t in ("meta_test", "transfer_0") for a in run_arms}
    assert {p for rule in ("population", "filter", "finalist_scores", "best") for _, p in jobs[rule]} == {
        contract.SEARCH_PRIORITY}
