"""Split guards: every stage reads the split and batch source DESIGN assigns it, and nothing else.

* fitness (§1.6): trains on training batches, scores the whole validation split;
* meta-test (§1.7): trains on training batches, scores the test split (validation only for the curve);
* rejection protocol (§1.5): its samples are training samples;
* local search (§1.4): each meta step starts from a freshly initialised network, takes its inner steps
  on training batches and measures the meta-objective on a validation batch.

A forward pre-hook on the (real) network records where every row it is shown comes from: digits rows
are unique across the three splits (checked), so each row names its split. The trainings are real.
The validation labels are shifted by one class, so that a network trained on the training split
scores far worse on validation than on test: a metric taken on the wrong split gives another number.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from evomal.gp.expressions import parse
from evomal.learning.devices import derive_seed
from evomal.learning.filters import rejection_test
from evomal.learning.meta_testing import meta_test
from evomal.learning.training import fitness, metric, unrolled_local_search
from evomal.losses.modules import CompiledLoss, baseline_loss
from evomal.tasks.models import build_model, reinitialize

CE = "mul(-1, mul(y, log(f)))"
SGD = dict(lr=0.05, momentum=0.9, batch_size=64)
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def task():
    from evomal.tasks.datasets import load_task

    digits = load_task("digits", seed=0)
    return dataclasses.replace(digits, y_val=(digits.y_val + 1) % digits.num_classes)


class Recorder:
    """Forward pre-hook: for every call, the network's mode, the splits its input rows come from, the
    number of rows and (if ``params``) the parameters it was called with (functional ones included)."""

    def __init__(self, task, model, *, params: bool = False) -> None:
        self.origin: dict[bytes, str] = {}
        for name in SPLITS:
            for row in task.split(name)[0]:
                key = row.cpu().numpy().tobytes()
                assert self.origin.setdefault(key, name) == name, "a row belongs to two splits"
        self.params = params
        self.calls: list[dict] = []
        model.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        x = args[0].detach()
        call = {"training": module.training, "rows": x.shape[0],
                "splits": {self.origin.get(row.cpu().numpy().tobytes(), "unknown") for row in x}}
        if self.params:
            call["params"] = {n: p.detach().clone() for n, p in module.named_parameters()}
        self.calls.append(call)

    def splits(self, training: bool | None = None) -> list[set[str]]:
        return [c["splits"] for c in self.calls if training is None or c["training"] == training]


def mlp(task, seed=0):
    return build_model("mlp", task.input_shape, task.num_outputs, seed=seed, hidden=[32])


def test_fitness_trains_on_training_batches_and_scores_the_validation_split(task):
    model = mlp(task)
    rec = Recorder(task, model)
    r = fitness(baseline_loss("classification"), task, model, steps=40, seed=0, **SGD)
    assert rec.splits(training=True) == [{"train"}] * 40
    evals = [c for c in rec.calls if not c["training"]]  # the curve's points; the last one is the fitness
    assert evals and all(c["splits"] == {"val"} and c["rows"] == task.y_val.shape[0] for c in evals)
    val = metric(model, task.x_val, task.y_val, task.kind)
    train = metric(model, task.x_train, task.y_train, task.kind)
    assert r.reason is None and r.fitness == val
    assert val > 0.8 and train < 0.3  # the shifted validation labels: another split gives another number


def test_meta_test_trains_on_training_batches_and_scores_the_test_split(task):
    models, recorders = [], []

    def build(seed):
        models.append(mlp(task, seed))
        recorders.append(Recorder(task, models[-1]))
        return models[-1]

    (r,) = meta_test({"baseline": baseline_loss("classification")}, task, build, seeds=[3], steps=40,
                     eval_every=20, **SGD)
    (rec,) = recorders
    assert rec.splits(training=True) == [{"train"}] * 40
    *curve, score = rec.splits(training=False)
    assert curve and all(s == {"val"} for s in curve) and score == {"test"}  # the curve, then the score
    test = metric(models[0], task.x_test, task.y_test, task.kind)
    val = metric(models[0], task.x_val, task.y_val, task.kind)
    assert r.reason is None and r.test_metric == test and r.curve[-1][2] == val
    assert test < 0.5 < 0.8 < val


def test_rejection_samples_are_training_samples(task):
    model = mlp(task)
    rec = Recorder(task, model)
    r = rejection_test(parse(CE), task, model, samples=100, steps=20, lr=0.01, seed=0)
    assert r.accepted
    assert rec.splits() == [{"train"}] and rec.calls[0]["rows"] == 100 and not rec.calls[0]["training"]


def test_local_search_steps_on_training_batches_and_measures_on_validation_batches(task):
    model = mlp(task)
    rec = Recorder(task, model)
    r = unrolled_local_search(CompiledLoss(CE, "classification"), task, model, steps=4, inner_steps=2,
                              seed=0, **SGD)
    assert r.status == "ok" and r.steps == 4
    # per meta step: two differentiable inner steps, then the meta-objective
    assert rec.splits() == [{"train"}, {"train"}, {"val"}] * 4
    assert {c["rows"] for c in rec.calls} == {SGD["batch_size"]}


def test_every_meta_step_starts_from_a_freshly_initialised_network(task):
    model = mlp(task)
    rec = Recorder(task, model, params=True)
    seed, steps = 5, 3
    unrolled_local_search(CompiledLoss(CE, "classification"), task, model, steps=steps, inner_steps=1,
                          seed=seed, **SGD)
    firsts = [c["params"] for c in rec.calls[::2]]  # the first inner step of each meta step
    assert len(firsts) == steps
    fresh = copy.deepcopy(model)
    for step, used in enumerate(firsts):
        reinitialize(fresh, derive_seed(seed, "meta-init", step))
        expected = dict(fresh.named_parameters())
        assert all(torch.equal(used[n], expected[n]) for n in expected), f"meta step {step}"
    # and the inner step really moved the network (so reusing it would be visible)
    second_call = rec.calls[1]["params"]  # the meta-objective of step 0: the stepped network
    assert not all(torch.equal(second_call[n], firsts[0][n]) for n in firsts[0])
