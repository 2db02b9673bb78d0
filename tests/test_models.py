"""Tests of evomal.tasks.models: registry, deterministic initialisation, functional use and meta steps."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from evomal.tasks import models
from evomal.tasks.models import build_model, list_models, reinitialize

# Tiny widths for the big networks so that the whole file runs in seconds on a CPU.
TINY = {
    "mlp": {"hidden": [32, 16]},
    "cnn": {"channels": [4, 8], "hidden": 16},
    "allcnnc": {"width": 4},
    "vgg16": {"width": 2},
    "resnet18": {"width": 2},
    "wideresnet": {"depth": 10, "widen_factor": 1},
}
IMAGE_MODELS = ["lenet5", "cnn", "allcnnc", "vgg16", "resnet18", "wideresnet"]
FLAT_MODELS = ["linear", "mlp"]

# Per-sample shapes of the registered datasets: (input_shape, num_outputs, kind, image_shape)
SHAPES = {
    "digits": ((64,), 10, "classification", [1, 8, 8]),
    "breast_cancer": ((30,), 2, "classification", None),
    "wine": ((13,), 3, "classification", None),
    "iris": ((4,), 3, "classification", None),
    "diabetes": ((10,), 1, "regression", None),
    "california": ((8,), 1, "regression", None),
    "mnist1d": ((40,), 10, "classification", [1, 40]),
    "fashion_mnist": ((1, 28, 28), 10, "classification", None),
    "cifar10": ((3, 32, 32), 10, "classification", None),
    "cifar100": ((3, 32, 32), 100, "classification", None),
}


def _cases():
    for model in FLAT_MODELS + IMAGE_MODELS:
        for dataset, (shape, outputs, kind, image_shape) in SHAPES.items():
            options = dict(TINY.get(model, {}))
            if model in IMAGE_MODELS and len(shape) == 1:
                if image_shape is None or (len(image_shape) == 2 and model != "cnn"):
                    continue  # not an image: incompatible
                options["image_shape"] = image_shape
            yield pytest.param(model, shape, outputs, kind, options, id=f"{model}-{dataset}")


def _batch(shape, outputs, kind, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    if kind == "classification":
        y = torch.randint(0, outputs, (n,), generator=g)
    else:
        y = torch.randn(n, 1, generator=g)
    return x, y


def _task_loss(out, y, kind):
    return F.cross_entropy(out, y) if kind == "classification" else F.mse_loss(out, y)


def test_registry_lists_every_model():
    assert set(list_models()) >= set(FLAT_MODELS + IMAGE_MODELS)
    assert list_models() == sorted(list_models())


def test_unknown_model_and_option():
    with pytest.raises(ValueError, match="unknown model 'transformer'") as info:
        build_model("transformer", (4,), 2)
    assert "mlp" in str(info.value) and "resnet18" in str(info.value)
    with pytest.raises(ValueError, match="unknown option 'depth' for model 'mlp'") as info:
        build_model("mlp", (4,), 2, depth=3)
    assert "hidden" in str(info.value) and "activation" in str(info.value)
    with pytest.raises(ValueError, match="activation"):
        build_model("mlp", (4,), 2, activation="swishy")
    with pytest.raises(ValueError, match="hidden"):
        build_model("mlp", (4,), 2, hidden=[10, -1])


def test_mlp_defaults_match_reference():
    net = build_model("mlp", (64,), 10)
    shapes = [tuple(p.shape) for name, p in net.named_parameters() if name.endswith("weight")]
    assert shapes == [(1000, 64), (1000, 1000), (10, 1000)]


def test_flat_inputs_to_image_models_fail_clearly():
    for name in IMAGE_MODELS:
        with pytest.raises(ValueError, match="image_shape"):
            build_model(name, (64,), 10, **TINY.get(name, {}))
    with pytest.raises(ValueError, match=r"image_shape=\[1, 8, 8\]"):
        build_model("lenet5", (64,), 10)
    with pytest.raises(ValueError, match="values per sample"):
        build_model("lenet5", (64,), 10, image_shape=[1, 28, 28])
    with pytest.raises(ValueError, match="too small"):
        build_model("lenet5", (1, 3, 3), 10)
    with pytest.raises(ValueError, match="depth"):
        build_model("wideresnet", (3, 32, 32), 10, depth=12)


@pytest.mark.parametrize("model,shape,outputs,kind,options", list(_cases()))
def test_forward_backward_and_meta_step(model, shape, outputs, kind, options):
    net = build_model(model, shape, outputs, seed=0, **options)
    x, y = _batch(shape, outputs, kind, 6, seed=1)
    out = net(x)
    assert out.shape == (6, outputs)
    _task_loss(out, y, kind).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    # One unrolled meta step through functional_call: a scalar loss weight w scales the inner loss,
    # one differentiable SGD step, then the task loss on another batch is differentiated w.r.t. w.
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    w = torch.tensor(1.0, requires_grad=True)
    inner = w * _task_loss(functional_call(net, (params, buffers), (x,)), y, kind)
    g = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    stepped = {k: p - 0.1 * gk for (k, p), gk in zip(params.items(), g)}
    x2, y2 = _batch(shape, outputs, kind, 6, seed=2)
    outer = _task_loss(functional_call(net, (stepped, buffers), (x2,)), y2, kind)
    (dw,) = torch.autograd.grad(outer, w)
    assert torch.isfinite(dw) and dw.abs() > 0


@pytest.mark.parametrize("model", ["resnet18", "wideresnet", "allcnnc", "vgg16"])
def test_torch_func_grad_with_batchnorm_buffers(model):
    net = build_model(model, (3, 32, 32), 10, seed=3, **TINY[model])
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    assert any(k.endswith("running_mean") for k in buffers)
    x, y = _batch((3, 32, 32), 10, "classification", 8, seed=4)
    w = torch.tensor(0.7, requires_grad=True)

    # BatchNorm in training mode updates its running statistics in place: under torch.func
    # transforms the buffers must be *arguments* of every transformed function (mutating a tensor
    # captured from an enclosing scope is refused by torch.func).
    def inner_loss(p, weight, b):
        return weight * F.cross_entropy(functional_call(net, (p, b), (x,)), y)

    def outer(weight, b):
        g = torch.func.grad(inner_loss)(params, weight, b)
        stepped = {k: params[k] - 0.05 * g[k] for k in params}
        return F.cross_entropy(functional_call(net, (stepped, b), (x,)), y)

    dw = torch.func.grad(outer)(w, buffers)
    assert torch.isfinite(dw) and dw.abs() > 0
    # the running statistics passed in were updated (training mode), the module's own were not
    own = dict(net.named_buffers())
    key = next(k for k in buffers if k.endswith("running_mean"))
    assert not torch.equal(buffers[key], own[key])
    assert torch.equal(own[key], torch.zeros_like(own[key]))


def test_initialisation_is_seeded_and_isolated():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = build_model("lenet5", (1, 28, 28), 10, seed=5)
    b = build_model("lenet5", (1, 28, 28), 10, seed=5)
    c = build_model("lenet5", (1, 28, 28), 10, seed=6)
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_reinitialize_reproduces_build_and_resets_batchnorm():
    opts = TINY["resnet18"]
    net = build_model("resnet18", (3, 32, 32), 10, seed=7, **opts)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    # train a step so that parameters and BN statistics move
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = _batch((3, 32, 32), 10, "classification", 8, seed=0)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    assert any(not torch.equal(fresh[k], v) for k, v in net.state_dict().items())
    before = torch.get_rng_state()
    reinitialize(net, 7)
    assert torch.equal(torch.get_rng_state(), before)
    after = net.state_dict()
    assert all(torch.equal(fresh[k], after[k]) for k in fresh)
    reinitialize(net, 8)
    assert any(not torch.equal(fresh[k], v) for k, v in net.state_dict().items())


def test_default_init_scale_matches_pytorch():
    net = build_model("linear", (400,), 10, seed=0)
    bound = 1 / 400**0.5
    w = net.head.weight.detach()
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
    assert abs(float(w.std()) - bound / 3**0.5) < 0.1 * bound


def test_reinitialize_is_in_place_on_reference_mlp():
    """Cheap by construction (no wall-clock bound): the same storage is overwritten, nothing is rebuilt."""
    net = build_model("mlp", (64,), 10)
    storage = {n: p.data_ptr() for n, p in net.named_parameters()}
    before = [p.detach().clone() for p in net.parameters()]
    reinitialize(net, 1)
    assert {n: p.data_ptr() for n, p in net.named_parameters()} == storage
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_reinitialize_handles_foreign_modules():
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

        def reset_parameters(self):
            torch.nn.init.normal_(self.scale)

        def forward(self, x):
            return x * self.scale

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), Custom(), torch.nn.LayerNorm(3))
    before = torch.get_rng_state()
    reinitialize(net, 1)
    first = [p.clone() for p in net.parameters()]
    reinitialize(net, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, net.parameters()))
    assert torch.equal(torch.get_rng_state(), before)

    class Opaque(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

    with pytest.raises(TypeError, match="Opaque"):
        reinitialize(Opaque(), 0)


def test_model_options_and_cnn_on_signals():
    assert models.model_options("wideresnet")["depth"] == 28
    assert models.model_options("wideresnet")["widen_factor"] == 10
    net = build_model("cnn", (1, 40), 10, channels=[4], hidden=8)
    assert any(isinstance(m, torch.nn.Conv1d) for m in net.modules())
    assert net(torch.randn(2, 1, 40)).shape == (2, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_build_on_cuda_matches_cpu():
    cpu = build_model("lenet5", (1, 28, 28), 10, seed=2)
    gpu = build_model("lenet5", (1, 28, 28), 10, seed=2, device="cuda")
    for (k, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu()), k
