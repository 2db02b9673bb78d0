"""Benchmark of the learning engine (evomal.losses / evomal.learning), one run, same inputs throughout.

    python bench/bench_engine.py            # reference sizes, writes the "Engine" section of docs/benchmarks.md
    python bench/bench_engine.py --quick    # smaller counts, a smoke run

Measures (medians over repeats, after a warm-up; variants measured interleaved so that a busy machine
slows them alike):
  (a) compiled loss forward + backward / the same expression written by hand in torch;
  (b) a fitness training step with a compiled loss / the same step with F.cross_entropy;
  (c) one unrolled meta step / one plain training step;
  (d) seconds per candidate: filters, local search, fitness.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from evomal.losses.codegen import compile_expression
from evomal.losses.modules import CompiledLoss, FrozenLoss, baseline_loss, initial_weights
from evomal.tasks.datasets import load_task
from evomal.learning.devices import resolve_device
from evomal.gp.expressions import parse
from evomal.learning.filters import gradient_signature, rejection_test
from evomal.learning.training import fitness, meta_gradient, unrolled_local_search
from evomal.tasks.models import build_model, reinitialize

CE = "mul(-1, mul(y, log(f)))"
DEEP = ("add(mul(aq(y, sub(f, -1)), log(add(f, sqrt(square(y))))), "
        "tanh(sub(max(f, mul(y, y)), min(abs(f), sign(sub(y, 1))))))")
MSE = "square(sub(y, f))"
EPS = 1e-7


# --------------------------------------------------------------------------- hand-written references
def _log(a):
    return torch.log(torch.clamp(torch.abs(a), min=EPS))


def _sqrt(a):
    return torch.sqrt(torch.clamp(torch.abs(a), min=EPS))


def _classification_inputs(output, target):
    f = torch.softmax(output, dim=1)
    return F.one_hot(target, f.shape[1]).to(f.dtype), f


def hand_ce(output, target):
    y, f = _classification_inputs(output, target)
    return (-(y * _log(f))).sum(dim=1).mean()


def hand_deep(output, target):
    y, f = _classification_inputs(output, target)
    a = y * torch.rsqrt(1.0 + (f + 1.0) * (f + 1.0))
    b = _log(f + _sqrt(y * y))
    c = torch.tanh(torch.maximum(f, y * y) - torch.minimum(torch.abs(f), torch.sign(y - 1.0)))
    return (a * b + c).sum(dim=1).mean()


def hand_mse(output, target):
    return (target - output).square().mean()


# --------------------------------------------------------------------------- timing
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, device, *, inner: int, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function; the functions take turns within every repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def fwd_bwd(loss, output, target):
    def run():
        output.grad = None
        loss(output, target).backward()
    return run


# --------------------------------------------------------------------------- sections
def bench_losses(args, device) -> list[tuple]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    cases = [(CE, "classification", hand_ce), (DEEP, "classification", hand_deep), (MSE, "regression", hand_mse)]
    for expression, kind, hand in cases:
        tree = parse(expression)
        w = initial_weights(tree, seed=1)  # not exactly 1, so no multiplication is skipped
        if kind == "classification":
            out = torch.randn(args.batch_size, 10, generator=gen).to(device).requires_grad_(True)
            target = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
        else:
            out = torch.randn(args.batch_size, 1, generator=gen).to(device).requires_grad_(True)
            target = torch.randn(args.batch_size, 1, generator=gen).to(device)
        fns = {
            "hand": fwd_bwd(hand, out, target),
            "trainable": fwd_bwd(CompiledLoss(tree, kind, w).to(device), out, target),
            "fixed": fwd_bwd(CompiledLoss(tree, kind, w, trainable=False).to(device), out, target),
            "frozen": fwd_bwd(FrozenLoss(tree, kind, w), out, target),
        }
        t = interleaved(fns, device, inner=args.loss_inner, repeats=args.repeats, warmup=50)
        rows.append((expression, tree.num_edges, t["hand"], t["trainable"], t["fixed"], t["frozen"]))
    return rows


def bench_steps(args, device, task, model, compiled) -> dict[str, float]:
    """(b, c) on one fixed batch, the three kinds of step alternating within every repeat."""
    lr, momentum = 0.01, 0.9
    gen = torch.Generator(device="cpu").manual_seed(0)
    idx = torch.randperm(task.x_train.shape[0], generator=gen)[:args.batch_size].to(device)
    vidx = torch.randperm(task.x_val.shape[0], generator=gen)[:args.batch_size].to(device)
    xb, yb = task.x_train[idx], task.y_train[idx]
    val = (task.x_val[vidx], task.y_val[vidx])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True)
    frozen = compiled.frozen().function  # what learn.train runs for a compiled loss
    ce = baseline_loss(task.kind)
    fn = compile_expression(compiled.tree)
    weights = compiled.weights.detach().clone().requires_grad_(True)
    meta_opt = torch.optim.Adam([weights], lr=1e-3)

    def training_step(loss):
        def run():
            out = model(xb)
            value = loss(out, yb)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        return run

    def meta_step():  # the body of learn.unrolled_local_search's loop
        reinitialize(model, 0)
        params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
        meta_loss, grad = meta_gradient(fn, task.kind, weights, model, params, [(xb, yb)], val, lr=lr,
                                        momentum=momentum, nesterov=True)
        torch.stack([meta_loss.double(), torch.isfinite(grad).all().double()]).tolist()
        weights.grad = grad
        meta_opt.step()

    fns = {"ce": training_step(ce), "compiled": training_step(frozen), "meta": meta_step}
    return interleaved(fns, device, inner=1, repeats=args.step_repeats, warmup=3)


def bench_candidate(args, task, model, compiled) -> dict[str, float]:
    kw = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.0, batch_size=args.batch_size, seed=0)
    tree = compiled.tree
    out = {}
    t0 = time.perf_counter()
    rejection_test(tree, task, model, steps=args.rejection_steps, lr=kw["lr"], seed=0)
    out["rejection"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gradient_signature(tree, task.kind, task.num_outputs, seed=0)
    out["signature"] = time.perf_counter() - t0
    r = unrolled_local_search(compiled, task, model, steps=args.meta_steps, **kw)
    out["local_search"] = r.seconds
    compiled.weights.data.copy_(r.weights)
    out["fitness"] = fitness(compiled, task, model, steps=args.fitness_steps, **kw).seconds
    return out


# --------------------------------------------------------------------------- report
def markdown(args, device, loss_rows, steps, cand, command) -> str:
    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    us = lambda s: f"{s * 1e6:.0f}"  # noqa: E731
    lines = [
        "## Engine", "",
        f"`{command}`", "",
        f"Device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"{args.dataset}, MLP hidden {args.hidden}, batch {args.batch_size}; medians of {args.repeats} "
        "repeats after a warm-up, variants interleaved.", "",
        "(a) Loss forward + backward w.r.t. the outputs (batch x 10 classes, or x 1 for regression), "
        "microseconds; ratios to the hand-written torch expression (target <= 1.5). `trainable`: "
        "`CompiledLoss` with weights requiring grad (local search); `fixed`: `CompiledLoss` with "
        "`trainable=False` (what `load_loss` returns); `frozen`: `CompiledLoss.frozen()` / `FrozenLoss`, "
        "weights as folded literals (used by `train`, `fitness`, `meta_test`).", "",
        "| expression | edges | hand (us) | trainable | fixed | frozen |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for expr, edges, hand, trainable, fixed, frozen in loss_rows:
        lines.append(f"| `{expr}` | {edges} | {us(hand)} | {trainable / hand:.2f} | {fixed / hand:.2f} | "
                     f"{frozen / hand:.2f} |")
    lines += [
        "", f"(b, c) One step on one fixed batch, milliseconds (median of {args.step_repeats}, the three "
        "kinds of step alternating); the compiled loss runs as `learn.train` runs it (`.frozen()`), the meta "
        "step is the body of `learn.unrolled_local_search`'s loop:", "",
        "| step | ms | ratio |", "|---|---:|---:|",
        f"| training step, F.cross_entropy | {ms(steps['ce'])} | 1.00 |",
        f"| training step, compiled CE expression (target <= 1.3) | {ms(steps['compiled'])} | "
        f"{steps['compiled'] / steps['ce']:.2f} |",
        f"| unrolled meta step (re-init + 1 inner step + meta-gradient + Adam) | {ms(steps['meta'])} | "
        f"{steps['meta'] / steps['ce']:.2f} |",
        "", f"(d) One candidate (`{CE}`), seconds:", "",
        "| part | count | seconds |", "|---|---:|---:|",
        f"| filter: rejection protocol | {args.rejection_steps} Adam steps | {cand['rejection']:.3f} |",
        f"| filter: gradient signature | 32 samples | {cand['signature']:.3f} |",
        f"| local search | {args.meta_steps} meta steps | {cand['local_search']:.2f} |",
        f"| fitness | {args.fitness_steps} SGD steps | {cand['fitness']:.2f} |",
        f"| total | | {sum(cand.values()):.2f} |", "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's own section (from '## Engine' to the next '## '), keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Engine\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--hidden", default="1000,1000", help="MLP hidden sizes, comma separated")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--meta-steps", type=int, default=250)
    p.add_argument("--fitness-steps", type=int, default=500)
    p.add_argument("--rejection-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--loss-inner", type=int, default=300, help="loss calls per timed repeat")
    p.add_argument("--step-repeats", type=int, default=40, help="repeats of the (b, c) steps")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run, not for the docs")
    p.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    args.hidden = [int(h) for h in args.hidden.split(",") if h]
    if args.quick:
        args.meta_steps, args.fitness_steps, args.rejection_steps = 20, 50, 20
        args.repeats, args.loss_inner, args.step_repeats = 3, 100, 5
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    task = load_task(args.dataset, seed=0, device=device)
    model = build_model("mlp", task.input_shape, task.num_outputs, seed=0, device=device, hidden=args.hidden)
    compiled = CompiledLoss(parse(CE), task.kind, initial_weights(parse(CE), seed=0)).to(device)
    loss_rows = bench_losses(args, device)
    steps = bench_steps(args, device, task, model, compiled)
    cand = bench_candidate(args, task, model, compiled)
    command = "python bench/bench_engine.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = markdown(args, device, loss_rows, steps, cand, command.strip())
    print(section)
    if not args.no_write and not args.quick:
        write_section(Path(args.output), section)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
