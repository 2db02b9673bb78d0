"""ML3 and TaylorGLO (DESIGN §1.8): the loss forms, their loss files and exports, CMA-ES resumption."""
from __future__ import annotations

import ast
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from evomal.core.files import ResultFileError
from evomal.learning.devices import derive_seed
from evomal.losses import neural, taylor
from evomal.losses.export import export_torch_source
from evomal.losses.families import write_document
from evomal.losses.lossfile import load_loss, save_loss
from evomal.methods import get_method, list_methods
from evomal.methods.cmaes import CMAESSettings, ask, read_state, restore, tell, write_state


def _batch(n=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


# --------------------------------------------------------------------------- ML3's network
def test_ml3_network_has_the_reference_shape_and_no_biases():
    loss = neural.NeuralLoss("classification", seed=2)
    net = neural.network(neural.LAYERS, loss.weights.detach())
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 50), (50, 50), (50, 1)]
    assert all(m.bias is None for m in linears)
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Softplus"]
    assert neural.num_weights() == 2 * 50 + 50 * 50 + 50 == loss.weights.numel()
    # the loss computes exactly this module on (prediction, target) pairs
    f, y = torch.rand(6, 3), torch.randint(0, 2, (6, 3)).float()
    assert torch.allclose(loss.compiled(loss.weights, y, f), net(torch.stack((f, y), dim=-1)).squeeze(-1))


def test_ml3_loss_is_the_softplus_network_per_class_summed_over_classes_averaged_over_the_batch():
    output, target = _batch()
    w = neural.initial_weights(seed=1).double()
    loss = neural.NeuralLoss("classification", w)
    w1, w2, w3 = (c.view(s) for c, s in zip(torch.split(w, [100, 2500, 50]), neural.weight_shapes(neural.LAYERS)))
    f = torch.softmax(output, dim=1)
    y = F.one_hot(target, 5).double()
    expected = 0.0
    for i in range(output.shape[0]):  # by hand: one (f_c, y_c) pair at a time
        for c in range(output.shape[1]):
            h = torch.relu(w2 @ torch.relu(w1 @ torch.stack([f[i, c], y[i, c]])))
            expected += F.softplus(w3 @ h).item()
    expected /= output.shape[0]
    assert loss(output, target).item() == pytest.approx(expected, rel=1e-6)
    values = loss.compiled(loss.weights.double(), y, f)
    assert values.shape == f.shape and bool((values > 0).all())  # Softplus: every term positive


def test_ml3_regression_is_the_mean_over_outputs():
    out = torch.randn(7, 1, dtype=torch.float64)
    tgt = torch.randn(7, dtype=torch.float64)
    loss = neural.NeuralLoss("regression", seed=4)
    values = loss.compiled(loss.weights.double(), tgt.reshape(7, 1), out)
    assert loss(out, tgt).item() == pytest.approx(values.mean().item(), rel=1e-12)


def test_ml3_weights_are_the_parameters_the_local_search_tunes(digits):
    """One flat vector, differentiable through EvoMAL's unrolled SGD (meta_gradient)."""
    from evomal.learning.training import meta_gradient
    from evomal.tasks.models import build_model

    loss = neural.NeuralLoss("classification", seed=0)
    model = build_model("mlp", digits.input_shape, digits.num_outputs, seed=0, hidden=[16])
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    batch = (digits.x_train[:32], digits.y_train[:32])
    value, grad = meta_gradient(loss.compiled, "classification", loss.weights.detach().requires_grad_(True), model,
                                params, [batch], (digits.x_val[:32], digits.y_val[:32]), lr=0.1)
    assert grad.shape == loss.weights.shape and math.isfinite(value.item())
    assert grad.abs().sum().item() > 0


# --------------------------------------------------------------------------- TaylorGLO's polynomial
THETA = [0.3, 0.6, -1.5, 2.0, 0.7, -0.4, 1.1, 0.9]


def _derivative(theta, ky, kf):
    """d^(ky+kf) L / dy^ky df^kf at the centre (θ0, θ1), by autograd."""
    y = torch.tensor(theta[0], dtype=torch.float64, requires_grad=True)
    f = torch.tensor(theta[1], dtype=torch.float64, requires_grad=True)
    value = taylor.taylor_elementwise(torch.tensor(theta, dtype=torch.float64), y, f)
    for var in [y] * ky + [f] * kf:
        (value,) = torch.autograd.grad(value, var, create_graph=True, allow_unused=True)
        if value is None:
            return 0.0
    return value.item()


def test_taylor_value_at_the_centre_is_zero_and_its_derivatives_are_the_coefficients():
    assert _derivative(THETA, 0, 0) == 0.0
    # the Taylor coefficients around (θ0, θ1): the factorials are part of the form
    assert _derivative(THETA, 0, 1) == pytest.approx(THETA[2])
    assert _derivative(THETA, 0, 2) == pytest.approx(THETA[3])
    assert _derivative(THETA, 0, 3) == pytest.approx(THETA[4])
    assert _derivative(THETA, 1, 1) == pytest.approx(THETA[5])
    assert _derivative(THETA, 1, 2) == pytest.approx(THETA[6])
    assert _derivative(THETA, 2, 1) == pytest.approx(THETA[7])


def test_taylor_has_no_term_without_the_prediction():
    """At f = θ1 the loss is 0 whatever the target: no pure-target term (the re-implementation has three)."""
    y = torch.linspace(-3, 3, 13, dtype=torch.float64)
    values = taylor.taylor_elementwise(torch.tensor(THETA, dtype=torch.float64), y, torch.full_like(y, THETA[1]))
    assert values.abs().max().item() == 0.0
    for k in (1, 2, 3):
        assert _derivative(THETA, k, 0) == 0.0


def test_taylor_loss_is_summed_over_classes_and_averaged_over_the_batch():
    output, target = _batch()
    loss = taylor.TaylorLoss("classification", THETA)
    f = torch.softmax(output, dim=1)
    y = F.one_hot(target, 5).double()
    values = taylor.taylor_elementwise(torch.tensor(THETA, dtype=torch.float64), y, f)
    assert loss(output, target).item() == pytest.approx(values.sum(dim=1).mean().item(), rel=1e-6)


# --------------------------------------------------------------------------- loss files and exports
@pytest.fixture(params=["ml3", "taylor"])
def family_file(request, tmp_path):
    kind = "classification"
    doc = (neural.document(kind, neural.initial_weights(seed=7), method="ml3", fitness=0.25)
           if request.param == "ml3" else taylor.document(kind, THETA, method="taylorglo", id="g0-001"))
    path = tmp_path / "loss.json"
    write_document(path, doc)
    return path


def test_family_loss_files_are_json_and_load_back(family_file):
    doc = json.loads(family_file.read_text())
    assert doc["version"] == 2 and doc["family"] in ("ml3", "taylor") and isinstance(doc["weights"], list)
    loss = load_loss(family_file)
    assert loss.family == doc["family"] and not loss.weights.requires_grad
    assert loss.weights.tolist() == doc["weights"]
    assert loss.info.get("method") in ("ml3", "taylorglo")


def test_standalone_export_gives_the_values_and_gradients_of_load_loss(family_file, tmp_path):
    source = export_torch_source(family_file)
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"torch"}  # nothing of evomal
    namespace: dict = {}
    exec(compile(source, "loss.py", "exec"), namespace)
    output64, target = _batch(n=9, c=4, seed=3)
    mine = load_loss(family_file)
    for fn, output in [(f, o) for f in (namespace["loss"], namespace["LearnedLoss"]())
                       for o in (output64, output64.float())]:
        a = output.clone().requires_grad_(True)
        b = output.clone().requires_grad_(True)
        ours, theirs = mine(a, target), fn(b, target)
        ours.backward()
        theirs.backward()
        # equal up to the rounding of the batch mean (the export multiplies by 1 / N, as the symbolic one does)
        eps = torch.finfo(output.dtype).eps
        assert theirs.dtype == output.dtype and theirs.item() == pytest.approx(ours.item(), rel=4 * eps)
        assert torch.allclose(a.grad, b.grad, rtol=8 * eps, atol=8 * eps * a.grad.abs().max().item())
    assert export_torch_source(family_file) == source  # deterministic


def test_symbolic_files_keep_version_1_without_a_family(tmp_path):
    from evomal.gp.expressions import parse

    doc = save_loss(tmp_path / "s.json", parse("square(sub(f, y))"), "regression", [1.0, 1.0, 1.0])
    assert doc["version"] == 1 and "family" not in doc
    assert type(load_loss(tmp_path / "s.json")).__name__ == "CompiledLoss"


def test_a_loss_file_of_an_unknown_family_fails_naming_the_known_ones(tmp_path, family_file):
    doc = json.loads(family_file.read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**doc, "family": "lstm"}))
    with pytest.raises(ValueError, match="unknown loss family 'lstm'.*ml3.*taylor"):
        load_loss(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({**doc, "version": 1}))
    with pytest.raises(ValueError, match="version 1"):
        load_loss(tmp_path / "old.json")


# --------------------------------------------------------------------------- methods
def test_the_registry_knows_the_five_methods_and_what_each_writes():
    assert set(list_methods()) >= {"baseline", "evomal", "gplfl", "ml3", "taylorglo"}
    shape = {m: (get_method(m).searches, get_method(m).has_generations) for m in list_methods()}
    assert shape["baseline"] == (False, False)
    assert shape["ml3"] == (True, False)
    assert shape["evomal"] == shape["gplfl"] == shape["taylorglo"] == (True, True)


def test_taylorglo_candidates_are_written_as_taylor_files(tmp_path):
    rec = {"id": "g0-000", "expression": taylor.describe(THETA), "theta": THETA}
    get_method("taylorglo").save_candidate_loss(tmp_path / "loss.json", rec, "classification", seed=0, id="g0-000",
                                                fingerprint="x")
    loss = load_loss(tmp_path / "loss.json")
    assert loss.family == "taylor" and loss.info == {"id": "g0-000", "fingerprint": "x"}
    assert json.loads((tmp_path / "loss.json").read_text())["expression"] == rec["expression"]


# --------------------------------------------------------------------------- CMA-ES state
SETTINGS = CMAESSettings(dimension=8, popsize=6, sigma=1.2, seed=3)


def _objective(x):
    return sum((v - 0.5) ** 2 for v in x)


def _run(generations, state=None):
    for _ in range(generations):
        samples = ask(state, SETTINGS)
        state = tell(state, SETTINGS, samples, [_objective(x) for x in samples])
    return state


def test_cmaes_resumes_from_its_state_file_after_a_kill(tmp_path):
    """A process that writes the state after each generation is SIGKILLed after generation 1; the
    search resumed from the file continues exactly as the uninterrupted search."""
    script = textwrap.dedent(f"""
        import os, signal
        from evomal.methods.cmaes import CMAESSettings, ask, tell, write_state
        settings = CMAESSettings(dimension=8, popsize=6, sigma=1.2, seed=3)
        state = None
        for g in range(5):
            samples = ask(state, settings)
            state = tell(state, settings, samples, [sum((v - 0.5) ** 2 for v in x) for x in samples])
            write_state({str(tmp_path)!r} + f"/gen_{{g}}.json", state)
            if g == 1:
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["gen_0.json", "gen_1.json"]
    resumed = _run(3, read_state(tmp_path / "gen_1.json"))
    straight = _run(5)
    assert resumed.to_dict() == straight.to_dict()
    assert resumed.iterations == 5 and resumed.evaluations == 30
    assert ask(resumed, SETTINGS) == ask(straight, SETTINGS)


def test_cmaes_state_is_data_and_checked_on_replay(tmp_path):
    state = _run(2)
    write_state(tmp_path / "s.json", state)
    doc = json.loads((tmp_path / "s.json").read_text())  # plain JSON: no pickle anywhere
    assert set(doc) >= {"settings", "generations", "mean", "sigma", "covariance"}
    assert len(doc["covariance"]) == 8 and len(doc["generations"]) == 2
    doc["generations"][1]["fitness"].reverse()  # other ranks than were told: the replay ends elsewhere
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ResultFileError, match="bad.json.*replayed distribution"):
        restore(read_state(tmp_path / "bad.json"), SETTINGS, source=tmp_path / "bad.json")
    other = CMAESSettings(dimension=8, popsize=7, sigma=1.2, seed=3)
    with pytest.raises(ResultFileError, match="s.json.*settings"):
        restore(read_state(tmp_path / "s.json"), other, source=tmp_path / "s.json")


def test_cmaes_touches_no_global_random_state():
    import numpy as np

    before = np.random.get_state()[1].copy()
    _run(2)
    assert np.array_equal(np.random.get_state()[1], before)


def test_cmaes_with_infinite_fitness_keeps_going():
    samples = ask(None, SETTINGS)
    state = tell(None, SETTINGS, samples, [math.inf] * 3 + [1.0, 2.0, float("nan")])
    assert math.isfinite(state.sigma) and all(math.isfinite(m) for m in state.mean)


def test_ml3_meta_training_moves_the_network_and_repeats_exactly(digits):
    from evomal.learning.context import TrainingSettings, model_factory
    from evomal.methods.ml3 import meta_train

    settings = TrainingSettings(steps=20, lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.0, batch_size=64)
    build = model_factory({"name": "mlp", "hidden": [16]}, digits, "cpu")
    runs = [meta_train(digits, build, seed=1, meta_steps=4, meta_lr=0.01, inner_steps=1, settings=settings)
            for _ in range(2)]
    first, again = runs
    assert first.search.status == "ok" and first.search.steps == 4 and len(first.search.curve) == 4
    assert torch.equal(first.loss.weights, again.loss.weights) and first.search.curve == again.search.curve
    start = neural.initial_weights(seed=derive_seed(1, "ml3-init"))
    assert not torch.equal(first.loss.weights.float(), start)  # Adam moved the network's weights
    assert not first.loss.weights.requires_grad and math.isfinite(first.fitness.fitness)


def test_config_refuses_what_a_method_cannot_run_and_accepts_keys_it_ignores():
    from evomal.pipeline.config import ConfigError, resolve_config

    def config(method, **exp):
        return {"run": ["a"], "experiments": {"a": {"method": method, "dataset": "digits", "model": "linear", **exp}}}

    with pytest.raises(ConfigError, match=r"experiments\.a\.search\.population: CMA-ES .* at least 2"):
        resolve_config(config("taylorglo", search={"population": 1}))
    # GP-only keys and their defaults never refuse a method without GP (tournament 4 > population 3)
    resolved = resolve_config(config("taylorglo", search={"population": 3}, local_search={"meta_steps": 9}))
    assert resolved["experiments"]["a"]["taylorglo"] == {"sigma": 1.2}
    resolve_config(config("ml3", search={"population": 2}, taylorglo={"sigma": 0.5}))
    with pytest.raises(ConfigError, match="unknown method 'ml4'; known: baseline, evomal, gplfl, ml3, taylorglo"):
        resolve_config(config("ml4"))
