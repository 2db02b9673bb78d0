"""Batched candidates (evomal.learning.batched): a stacked group equals its members trained one by one."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evomal.gp.expressions import parse
from evomal.learning.batched import (
    AUTO_MAX_PARAMS,
    group_metric,
    groups,
    local_search_group,
    train_group,
    unbatchable_reason,
    use_batching,
)
from evomal.learning.plan import LocalSearchPlan
from evomal.learning.training import metric, train, unrolled_local_search
from evomal.losses.modules import CompiledLoss, baseline_loss, initial_weights
from evomal.tasks.models import build_model, reinitialize

SGD = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, batch_size=64)
LOSSES = ["mul(-1, mul(y, log(f)))",  # cross-entropy
          "square(sub(f, y))",  # Brier
          "mul(-1, mul(mul(sub(1, f), y), log(f)))",  # focal-like
          "mul(y, f)"]  # a bad loss: rewards confident mistakes, diverges nowhere but trains badly
# a loss that overflows float32 at once: the member diverges in the first steps
EXPLODES = ("square(square(square(mul(f, y))))", [1.0, 1.0, 1.0, 1e12, 1.0])


def _loss(expr: str, seed: int = 0, weights=None):
    tree = parse(expr)
    w = initial_weights(tree, seed=seed, noise=0.2) if weights is None else torch.tensor(weights)
    return CompiledLoss(tree, "classification", w)


def _mlp(task, seed=0):
    return build_model("mlp", task.input_shape, task.num_outputs, seed=seed, hidden=[24, 16])


def _close(a, b, tol=1e-4):
    return all(math.isclose(u, v, rel_tol=tol, abs_tol=tol) or (math.isnan(u) and math.isnan(v))
               for u, v in zip(a, b)) and len(a) == len(b)


def _curve_close(c1, c2, tol=1e-4):
    return len(c1) == len(c2) and all(s1 == s2 and _close([l1, m1], [l2, m2], tol)
                                      for (s1, l1, m1), (s2, l2, m2) in zip(c1, c2))


def test_groups_are_fixed_by_the_items_alone():
    assert groups(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert groups([], 3) == []


@pytest.mark.parametrize("milestones", [(), (30, 60)])
def test_a_group_equals_its_members_trained_one_by_one(digits, milestones):
    losses = [_loss(e, seed=i) for i, e in enumerate(LOSSES)] + [_loss(*EXPLODES[:1], weights=EXPLODES[1])]
    kw = dict(steps=80, seed=5, eval_every=20, milestones=milestones, gamma=0.5, check_every=10, **SGD)
    members = train_group(_mlp(digits, 3), [dict(_mlp(digits, 3).named_parameters())] * len(losses),
                          losses, digits, **kw)
    x_test, y_test = digits.x_test, digits.y_test
    for loss, member in zip(losses, members):
        model = _mlp(digits, 3)
        alone = train(model, loss, digits, **kw)
        got = member.result
        assert (got.diverged, got.reason, got.steps) == (alone.diverged, alone.reason, alone.steps)
        assert _curve_close(got.curve, alone.curve), (got.curve, alone.curve)
        if alone.reason is None:
            net = _mlp(digits, 3)
            net.load_state_dict(member.params)
            assert math.isclose(metric(net, x_test, y_test, "classification"),
                                metric(model, x_test, y_test, "classification"), abs_tol=2 / len(y_test))
    assert members[-1].result.diverged and "non-finite" in members[-1].result.reason
    assert all(m.result.reason is None for m in members[:-1])


def test_a_member_that_diverges_changes_nothing_for_the_others(digits):
    good = [_loss(e, seed=i) for i, e in enumerate(LOSSES[:2])]
    kw = dict(steps=40, seed=1, eval_every=10, check_every=5, **SGD)
    init = dict(_mlp(digits).named_parameters())
    with_bad = train_group(_mlp(digits), [init] * 3, [good[0], _loss(EXPLODES[0], weights=EXPLODES[1]), good[1]],
                           digits, **kw)
    without = train_group(_mlp(digits), [init] * 2, good, digits, **kw)
    assert with_bad[1].result.diverged
    for a, b in zip([with_bad[0], with_bad[2]], without):
        assert _curve_close(a.result.curve, b.result.curve, tol=1e-5)


def test_members_start_from_their_own_initial_networks(digits):
    ce = baseline_loss("classification")
    inits = [dict(_mlp(digits, s).named_parameters()) for s in (0, 1)]
    members = train_group(_mlp(digits), inits, [ce, ce], digits, steps=30, seed=2, eval_every=10, **SGD)
    for s, member in zip((0, 1), members):
        alone = train(_mlp(digits, s), ce, digits, steps=30, seed=2, eval_every=10, **SGD)
        assert _curve_close(member.result.curve, alone.curve)
    assert members[0].result.curve != members[1].result.curve


def test_a_loss_without_the_prediction_stops_like_train(digits):
    members = train_group(_mlp(digits), [dict(_mlp(digits).named_parameters())] * 2,
                          [_loss("mul(y, y)"), _loss(LOSSES[0])], digits, steps=20, seed=0, **SGD)
    alone = train(_mlp(digits), _loss("mul(y, y)"), digits, steps=20, seed=0, **SGD)
    assert (members[0].result.reason, members[0].result.steps) == (alone.reason, alone.steps)
    assert members[1].result.reason is None and members[1].result.steps == 20


def test_group_metric_reads_the_split_it_is_given(digits):
    nets = [_mlp(digits, s) for s in (0, 4)]
    names = [n for n, _ in nets[0].named_parameters()]
    values = [torch.stack([dict(n.named_parameters())[name].detach() for n in nets]) for name in names]
    for split in ("val", "test"):
        x, y = getattr(digits, f"x_{split}"), getattr(digits, f"y_{split}")
        got = group_metric(nets[0], names, values, x, y, "classification", chunk=50)
        assert got == pytest.approx([metric(n, x, y, "classification") for n in nets], abs=1e-12)


def test_group_metric_of_regression_is_the_mse(diabetes):
    nets = [build_model("mlp", diabetes.input_shape, 1, seed=s, hidden=[8]) for s in (0, 1)]
    names = [n for n, _ in nets[0].named_parameters()]
    values = [torch.stack([dict(n.named_parameters())[name].detach() for n in nets]) for name in names]
    got = group_metric(nets[0], names, values, diabetes.x_val, diabetes.y_val, "regression")
    assert got == pytest.approx([metric(n, diabetes.x_val, diabetes.y_val, "regression") for n in nets], rel=1e-6)


@pytest.mark.parametrize("use_plan", [False, True])
def test_a_batched_local_search_equals_the_searches_one_by_one(digits, use_plan):
    exprs = LOSSES[:3] + ["mul(y, y)"]  # the last one does not see the prediction: its weights stay
    kw = dict(steps=6, meta_lr=1e-2, inner_steps=2, seed=3, **SGD)
    plan = LocalSearchPlan.build(digits, _mlp(digits), steps=6, inner_steps=2, batch_size=64, seed=3) \
        if use_plan else None
    together = local_search_group([_loss(e, seed=i) for i, e in enumerate(exprs)], digits, _mlp(digits),
                                  plan=plan, **kw)
    for i, (e, got) in enumerate(zip(exprs, together)):
        alone = unrolled_local_search(_loss(e, seed=i), digits, _mlp(digits), **kw)
        assert (got.status, got.reason, got.steps) == (alone.status, alone.reason, alone.steps)
        assert _close(got.curve, alone.curve, 1e-4)
        # Adam scales each weight's step by its own gradient's size: a weight whose meta-gradient is zero
        # up to rounding (CE's last edge) moves by a fraction of meta_lr either way, so compare on that scale
        assert torch.allclose(got.weights, alone.weights, rtol=0, atol=0.2 * kw["meta_lr"])
    assert not torch.equal(together[0].weights, _loss(exprs[0], seed=0).weights)  # the search moved them


def test_a_failing_member_of_a_batched_local_search_leaves_the_others_alone(diabetes):
    reg = lambda e, w=None: CompiledLoss(parse(e), "regression",  # noqa: E731
                                         initial_weights(parse(e), seed=0) if w is None else torch.tensor(w))
    model = build_model("mlp", diabetes.input_shape, 1, seed=0, hidden=[8])
    kw = dict(steps=4, lr=0.01, seed=0)
    bad = ("square(square(mul(f, y)))", [1.0, 1.0, 1e30, 1.0])  # finite, but overflows float32
    got = local_search_group([reg("square(sub(f, y))"), reg(*bad)], diabetes, model, **kw)
    alone = unrolled_local_search(reg("square(sub(f, y))"), diabetes, model, **kw)
    assert got[1].status == "failed" and "meta step 0" in got[1].reason
    assert torch.equal(got[1].weights, torch.tensor(bad[1]))
    assert got[0].status == "ok" and _close(got[0].curve, alone.curve, 1e-5)


def test_batching_is_decided_by_the_network_and_the_device():
    small = build_model("mlp", (40,), 10, seed=0, hidden=[100, 100])
    large = build_model("mlp", (10,), 1, seed=0, hidden=[1000, 1000])
    assert sum(p.numel() for p in large.parameters()) > AUTO_MAX_PARAMS
    assert use_batching("auto", small, "cpu") and not use_batching("auto", large, "cpu")
    assert use_batching("auto", large, "cuda") and use_batching("on", large, "cpu")
    assert not use_batching("off", small, "cpu")
    assert use_batching(True, large, "cpu") and not use_batching(False, small, "cpu")  # YAML's bare on / off
    lenet = build_model("lenet5", (1, 28, 28), 10, seed=0)
    assert not use_batching("auto", lenet, "cpu") and use_batching("auto", lenet, "cuda")
    norm = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    drop = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    assert "buffers" in unbatchable_reason(norm) and "dropout" in unbatchable_reason(drop)
    assert not use_batching("on", norm, "cuda") and not use_batching("on", drop, "cpu")
    with pytest.raises(ValueError, match="auto, on, off"):
        use_batching("always", small, "cpu")


def test_reinitialised_members_share_the_initial_network_of_their_seed(digits):
    a, b = _mlp(digits, 0), _mlp(digits, 7)
    reinitialize(b, 0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fitness_of_a_group_equals_fitness_one_by_one(digits):
    from evomal.learning.batched import fitness_group
    from evomal.learning.training import fitness

    losses = [_loss(e, seed=i) for i, e in enumerate(LOSSES)] + [_loss("mul(y, y)")]
    kw = dict(steps=60, seed=4, **SGD)
    together = fitness_group(losses, digits, _mlp(digits, 9), **kw)
    for loss, got in zip(losses, together):
        alone = fitness(loss, digits, _mlp(digits, 9), **kw)
        assert got.reason == alone.reason and len(got.curve) == len(alone.curve) == 11 - (alone.reason is not None) * 10
        assert math.isclose(got.fitness, alone.fitness, abs_tol=1e-9) or got.fitness == alone.fitness == math.inf
        assert _curve_close(got.curve, alone.curve)
    assert together[-1].fitness == math.inf and "does not depend" in together[-1].reason


def test_batched_meta_test_and_finalists_equal_the_runs_one_by_one(digits):
    from evomal.learning.finalists import score_on_validation
    from evomal.learning.meta_testing import meta_test

    losses = {"baseline": baseline_loss("classification"), "brier": _loss(LOSSES[1]), "focal": _loss(LOSSES[2])}
    build = lambda seed: _mlp(digits, seed)  # noqa: E731
    kw = dict(seeds=[0, 1], steps=50, **SGD)
    seq, bat = meta_test(losses, digits, build, **kw), meta_test(losses, digits, build, batched=True, **kw)
    assert [(r.method, r.seed) for r in seq] == [(r.method, r.seed) for r in bat]
    for a, b in zip(seq, bat):  # the test split: one example is 1/360 of the error rate
        assert abs(a.test_metric - b.test_metric) <= 1 / len(digits.y_test) + 1e-12
    v_seq = score_on_validation(losses, digits, build, **kw)
    v_bat = score_on_validation(losses, digits, build, batched=True, **kw)
    assert [(s.name, s.seed) for s in v_seq] == [(s.name, s.seed) for s in v_bat]
    assert all(abs(a.metric - b.metric) <= 1 / len(digits.y_val) + 1e-12 for a, b in zip(v_seq, v_bat))


def test_members_with_their_own_seeds_draw_their_own_batches(digits):
    ce, brier = baseline_loss("classification"), _loss(LOSSES[1])
    seeds = [0, 3, 0, 5]
    inits = [dict(_mlp(digits, s).named_parameters()) for s in seeds]
    members = train_group(_mlp(digits), inits, [ce, ce, brier, brier], digits, steps=40, seed=seeds, eval_every=10,
                          **SGD)
    for s, loss, member in zip(seeds, [ce, ce, brier, brier], members):
        alone = train(_mlp(digits, s), loss, digits, steps=40, seed=s, eval_every=10, **SGD)
        assert _curve_close(member.result.curve, alone.curve)
    with pytest.raises(ValueError, match="one seed per loss"):
        train_group(_mlp(digits), inits, [ce] * 4, digits, steps=1, seed=[0, 1], **SGD)


def test_the_batching_key_is_checked_before_any_job_and_reads_yaml_on(tmp_path):
    from workflow_utils import snakemake, tiny_config, write_config

    bad = tiny_config()
    bad["batching"] = "always"
    write_config(tmp_path / "bad", bad)
    proc = snakemake(tmp_path / "bad", "-n", check=False, timeout=300)
    assert proc.returncode != 0 and "batching" in proc.stderr + proc.stdout
    write_config(tmp_path / "on", tiny_config())
    path = tmp_path / "on" / "config.yaml"
    path.write_text(path.read_text() + "batching: on\n")  # YAML 1.1: a bare on is true
    assert snakemake(tmp_path / "on", "-n", timeout=300).returncode == 0
