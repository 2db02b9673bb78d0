"""Learning engine: meta-gradients, differentiable SGD, local search, training, fitness, meta-test, devices."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evomal.losses.codegen import compile_expression
from evomal.losses.modules import CompiledLoss, FrozenLoss, baseline_loss, initial_weights
from evomal.learning.devices import derive_seed, generator_for, make_generator, resolve_device
from evomal.gp.expressions import parse
from evomal.learning.training import (
    BatchSampler,
    differentiable_sgd,
    fitness,
    meta_objective,
    metric,
    train,
    unrolled_local_search,
)
from evomal.learning.meta_testing import meta_test
from evomal.tasks.models import build_model, reinitialize

CE = "mul(-1, mul(y, log(f)))"
SETTINGS = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, batch_size=64)





def small_mlp(task, seed=0, hidden=(32,)):
    return build_model("mlp", task.input_shape, task.num_outputs, seed=seed, hidden=list(hidden))


def tiny_net(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    return net


def tiny_batches(seed: int, count: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
            for _ in range(count)]


# --------------------------------------------------------------------------- meta-gradient
@pytest.mark.parametrize("inner", [1, 2])
def test_meta_gradient_equals_finite_differences(inner):
    tree = parse("add(mul(-1, mul(y, log(f))), mul(square(sub(f, y)), tanh(-1)))")
    fn = compile_expression(tree)
    net = tiny_net(0)
    params = {n: p.detach().requires_grad_(True) for n, p in net.named_parameters()}
    batches = tiny_batches(1, inner + 1)
    opts = dict(lr=0.3, momentum=0.9, nesterov=True, weight_decay=0.01)
    w = initial_weights(tree, seed=2, noise=0.2, dtype=torch.float64).requires_grad_(True)

    def objective(weights):
        return meta_objective(fn, "classification", weights, net, params, batches[:inner], batches[inner], **opts)

    (grad,) = torch.autograd.grad(objective(w), [w])
    h = 1e-6
    numeric = torch.zeros_like(w)
    with torch.no_grad():
        for i in range(w.numel()):
            e = torch.zeros_like(w)
            e[i] = h
            numeric[i] = (objective(w + e) - objective(w - e)) / (2 * h)
    assert float(grad.abs().max()) > 1e-4  # a real signal, not two zeros agreeing
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_differentiable_sgd_matches_torch_sgd(momentum, nesterov):
    tree = parse(CE)
    w = initial_weights(tree, seed=0, noise=0.1, dtype=torch.float64)
    loss = CompiledLoss(tree, "classification", w, trainable=False)
    batches = tiny_batches(3, 3)
    net = tiny_net(1)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    stepped = differentiable_sgd(net, params, batches, loss, lr=0.2, momentum=momentum, nesterov=nesterov,
                                 weight_decay=0.05)
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=momentum, nesterov=nesterov, weight_decay=0.05)
    for x, y in batches:
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    for name, p in net.named_parameters():
        torch.testing.assert_close(stepped[name].detach(), p.detach(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- local search
def _held_out_meta_loss(fn, task, model, weights, pairs=12):
    """Mean meta-objective over fixed (initialisation, batch) pairs that the search never saw."""
    total = 0.0
    for k in range(pairs):
        reinitialize(model, 10_000 + k)
        params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
        g = make_generator(k)
        i = torch.randint(0, task.x_train.shape[0], (128,), generator=g)
        j = torch.randint(0, task.x_val.shape[0], (128,), generator=g)
        total += float(meta_objective(fn, task.kind, weights, model, params, [(task.x_train[i], task.y_train[i])],
                                      (task.x_val[j], task.y_val[j]), lr=0.05).detach())
    return total / pairs


def test_local_search_decreases_the_validation_task_loss(digits):
    tree = parse(CE)
    loss = CompiledLoss(tree, "classification", initial_weights(tree, seed=0))
    model = small_mlp(digits)
    before = loss.weights.detach().clone()
    r = unrolled_local_search(loss, digits, model, steps=40, meta_lr=1e-2, lr=0.05, seed=0)
    assert r.status == "ok" and r.reason is None and len(r.curve) == 40 and r.seconds > 0
    assert torch.equal(loss.weights.detach(), before)  # the input loss is left as it was
    fn = compile_expression(tree)
    assert _held_out_meta_loss(fn, digits, model, r.weights) < _held_out_meta_loss(fn, digits, model, before) - 1e-3
    assert sum(r.curve[-10:]) < sum(r.curve[:10])


def test_local_search_and_fitness_are_deterministic(digits):
    tree = parse("add(mul(-1, mul(y, log(f))), square(sub(f, y)))")
    runs = []
    for _ in range(2):
        loss = CompiledLoss(tree, "classification", initial_weights(tree, seed=4))
        model = small_mlp(digits, seed=9)
        r = unrolled_local_search(loss, digits, model, steps=5, inner_steps=2, seed=3, **SETTINGS)
        loss.weights.data.copy_(r.weights)
        fit = fitness(loss, digits, model, steps=30, seed=3, **SETTINGS)
        runs.append((r, fit))
    (r1, f1), (r2, f2) = runs
    assert torch.equal(r1.weights, r2.weights) and r1.curve == r2.curve
    assert f1.fitness == f2.fitness and f1.curve == f2.curve and f1.reason is None


def test_local_search_stops_on_non_finite_values(diabetes):
    tree = parse("square(square(mul(f, y)))")
    weights = torch.tensor([1.0, 1.0, 1e30, 1.0])  # finite, but the loss overflows float32
    r = unrolled_local_search(CompiledLoss(tree, "regression", weights), diabetes, small_mlp(diabetes), steps=5,
                              lr=0.01, seed=0)
    assert r.status == "failed" and "non-finite" in r.reason and "meta step 0" in r.reason
    assert torch.equal(r.weights, weights) and r.curve == []


def test_local_search_of_a_loss_without_the_prediction_is_harmless(digits):
    r = unrolled_local_search(CompiledLoss("mul(y, y)", "classification"), digits, small_mlp(digits), steps=3,
                              lr=0.01, seed=0)
    assert r.status == "ok" and torch.equal(r.weights, torch.ones(2))


# --------------------------------------------------------------------------- training and fitness
def test_fitness_of_a_good_loss_beats_chance(digits):
    tree = parse(CE)
    r = fitness(CompiledLoss(tree, "classification"), digits, small_mlp(digits), steps=150, seed=0,
                eval_every=50, **SETTINGS)
    assert r.reason is None and r.fitness < 0.3
    assert [c[0] for c in r.curve] == [0, 50, 100, 150] and r.curve[-1][2] == r.fitness
    assert math.isnan(r.curve[0][1]) and r.curve[0][2] > 0.5  # the untrained network: no training loss yet


def test_fitness_curve_has_ten_points_by_default_and_evaluating_does_not_change_training(digits):
    loss = CompiledLoss(parse(CE), "classification")
    dense, sparse = small_mlp(digits), small_mlp(digits)
    a = fitness(loss, digits, dense, steps=60, seed=0, **SETTINGS)
    b = fitness(loss, digits, sparse, steps=60, seed=0, eval_every=60, **SETTINGS)
    assert [c[0] for c in a.curve] == list(range(0, 61, 6)) and [c[0] for c in b.curve] == [0, 60]
    assert a.fitness == b.fitness
    assert all(torch.equal(p, q) for p, q in zip(dense.parameters(), sparse.parameters()))


@pytest.mark.parametrize("expression,weights", [
    (CE, [math.nan, 1, 1, 1, 1]),
    ("square(square(square(square(square(square(square(sub(f, y))))))))", None),
])
def test_nan_producing_loss_gets_infinite_fitness(diabetes, digits, expression, weights):
    task = digits if expression == CE else diabetes
    loss = CompiledLoss(expression, task.kind, weights)
    r = fitness(loss, task, small_mlp(task), steps=60, seed=0, lr=0.1, momentum=0.9)
    assert r.fitness == math.inf and r.reason and "non-finite" in r.reason


def test_diverging_training_is_detected(diabetes):
    model = small_mlp(diabetes)
    r = train(model, baseline_loss("regression"), diabetes, steps=200, lr=50.0, seed=0)
    assert r.diverged and "non-finite" in r.reason and r.steps < 200


def test_loss_without_the_output_stops_training(digits):
    r = fitness(FrozenLoss("mul(y, y)", "classification"), digits, small_mlp(digits), steps=20, seed=0, lr=0.1)
    assert r.fitness == math.inf and "does not depend" in r.reason


def test_metric(digits):
    model = small_mlp(digits)
    with torch.no_grad():
        out = model(digits.x_val)
    expected = float((out.argmax(1) != digits.y_val).float().mean())
    assert metric(model, digits.x_val, digits.y_val, "classification", chunk=50) == pytest.approx(expected)
    assert model.training  # the mode is restored


def test_meta_test_gives_every_method_the_same_seeds_and_batches(digits):
    losses = {"baseline": baseline_loss("classification"), "ce_expression": CompiledLoss(CE, "classification")}
    build = lambda seed: small_mlp(digits, seed=seed)  # noqa: E731
    results = meta_test(losses, digits, build, seeds=[0, 1], steps=60, milestones=[40], gamma=0.1, eval_every=30,
                        **SETTINGS)
    assert [(r.method, r.seed) for r in results] == [("baseline", 0), ("ce_expression", 0), ("baseline", 1),
                                                   ("ce_expression", 1)]
    for a, b in zip(results[::2], results[1::2]):
        # CE written as an expression differs from CE only by the 1e-7 clamp: same init, same batches
        assert abs(a.test_metric - b.test_metric) <= 2 / digits.y_test.shape[0]
        assert not a.diverged and [c[0] for c in a.curve] == [0, 30, 60] and a.seconds > 0
    assert results[0].test_metric != results[2].test_metric or results[0].curve != results[2].curve


def test_meta_test_reports_each_run_as_it_ends(digits):
    seen = []
    losses = {"baseline": baseline_loss("classification"), "ce_expression": CompiledLoss(CE, "classification")}
    results = meta_test(losses, digits, lambda seed: small_mlp(digits, seed=seed), seeds=[0, 1], steps=5,
                        on_result=lambda r: seen.append((r.method, r.seed, len(seen))), **SETTINGS)
    assert seen == [(r.method, r.seed, i) for i, r in enumerate(results)]


def test_batch_sampler_epochs_and_determinism():
    a = BatchSampler(10, 3, seed=5, device="cpu")
    b = BatchSampler(10, 3, seed=5, device="cpu")
    first = [a.next() for _ in range(3)]
    assert all(torch.equal(x, b.next()) for x in first)
    assert sorted(torch.cat(first).tolist()) == sorted(set(torch.cat(first).tolist()))  # no repeats in an epoch
    assert BatchSampler(4, 128, seed=0, device="cpu").next().numel() == 4


# --------------------------------------------------------------------------- devices
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1'.*CUDA is not available"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(ValueError, match="cuda:99"):
            resolve_device("cuda:99")


def test_seeds_and_generators():
    assert derive_seed(1, "init", 3) == derive_seed(1, "init", 3) != derive_seed(1, "init", 4)
    assert 0 <= derive_seed("x") < 2**63
    a = torch.rand(3, generator=generator_for("cpu", 1, "a"))
    assert torch.equal(a, torch.rand(3, generator=make_generator(derive_seed(1, "a"))))
