"""Opt-in analyses (docs/analysis.md): learning-rate sweep, loss landscapes, primitive statistics.

Unit tests run the real learning code on digits at tiny sizes; the end-to-end test runs all three
analyses through the real snakemake.
"""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from evomal.core import files
from evomal.gp.expressions import parse
from evomal.gp.primitives import PRIMITIVES
from evomal.gp.usage import primitive_counts, primitive_usage
from evomal.learning.landscape import (evaluate_landscape, filter_normalize, landscape_directions, landscapes,
                                       objective_at, random_directions, training_subset)
from evomal.learning.sensitivity import lr_sweep
from evomal.learning.training import metric
from evomal.losses.lossfile import save_loss
from evomal.losses.modules import CompiledLoss, baseline_loss
from evomal.pipeline.analysis import (ANALYSIS_FILES, analysis_targets, check_primitive_sources, counts_primitives,
                                      landscape_stage,
                                      lr_sweep_settings, lr_sweep_stage, primitive_stats_stage, read_landscape)
from evomal.pipeline.config import ConfigError, resolve_config
from evomal.results.report import check_png
from evomal.results.report.analysis_plots import plot_landscape, plot_lr_sweep, plot_primitive_stats
from evomal.tasks.models import build_model
from workflow_utils import snakemake, tiny_config, write_config

CE_EXPR = "mul(-1, mul(y, log(f)))"


def _builder(task, hidden=(16,)):
    return lambda seed: build_model("mlp", task.input_shape, task.num_outputs, seed=seed, hidden=list(hidden))


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def _exp(**overrides) -> dict:
    return resolve_config(tiny_config(**overrides))["experiments"]["tiny"]


# --------------------------------------------------------------------------- landscape: directions
def test_filter_normalisation_gives_every_filter_the_norm_of_its_weights():
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))
    params = {n: p.detach() for n, p in net.named_parameters()}
    (raw,) = random_directions(params, seed=3, count=1)
    normed = filter_normalize(raw, params)
    assert normed.keys() == params.keys()
    for name, d in normed.items():
        w = params[name]
        assert d.shape == w.shape
        if w.dim() > 1:  # conv filters (5, 2, 3, 3) and linear neurons (7, 80)
            torch.testing.assert_close(_filter_norms(d), _filter_norms(w))
            # only rescaled per filter: each filter keeps the random draw's orientation
            cos = torch.nn.functional.cosine_similarity(d.flatten(1), raw[name].flatten(1), dim=1)
            torch.testing.assert_close(cos, torch.ones_like(cos))
        else:  # biases and batch-norm parameters are not perturbed (Li et al.'s ignore='biasbn')
            assert torch.count_nonzero(d) == 0, name


def test_the_same_directions_are_drawn_for_every_network(digits):
    build = _builder(digits)
    pa = dict(build(0).named_parameters())
    pb = dict(build(1).named_parameters())
    da, db = landscape_directions(pa, 5), landscape_directions(pb, 5)
    other = landscape_directions(pb, 6)
    for name, w in pa.items():
        if w.dim() < 2:
            continue
        for k in range(2):  # normalised against different weights, but the same unit direction per filter
            unit_a = da[k][name].flatten(1) / _filter_norms(da[k][name])[:, None]
            unit_b = db[k][name].flatten(1) / _filter_norms(db[k][name])[:, None]
            torch.testing.assert_close(unit_a, unit_b)
            assert not torch.allclose(unit_b, other[k][name].flatten(1) / _filter_norms(other[k][name])[:, None])
        assert not torch.allclose(da[0][name], da[1][name])  # d1 and d2 are two draws


def test_landscapes_of_identical_networks_are_identical(digits):
    """Two methods that train the same network must get the same landscape: same directions, same subset."""
    ce = baseline_loss("classification")
    coords, out = landscapes({"baseline": ce, "again": ce}, digits, _builder(digits), train_seed=0, direction_seed=2,
                             steps=10, points_1d=5, points_2d=3, span=0.5, samples=64, lr=0.1, batch_size=32)
    assert [r.method for r in out] == ["baseline", "again"]
    assert coords["coords_1d"] == [-0.5, -0.25, 0.0, 0.25, 0.5] and coords["samples"] == 64
    a, b = out
    assert a.line == b.line and a.grid == b.grid and a.center == b.center
    assert len(a.line) == 5 and len(a.grid) == 3 and all(len(row) == 3 for row in a.grid)
    # the trained network is at the centre of both the line and the grid
    assert a.line[2] == pytest.approx(a.center) and a.grid[1][1] == pytest.approx(a.center)
    assert min(a.line) < max(a.line)


@torch.no_grad()
def test_landscape_points_are_the_loss_of_the_perturbed_network(digits):
    model = _builder(digits)(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    directions = landscape_directions(params, 0)
    x, y = training_subset(digits, 100, 0)
    ce = baseline_loss("classification")
    line, grid = evaluate_landscape(model, ce, x, y, directions, [-1.0, 0.0, 0.7], [-0.3, 0.4])
    for n, p in model.named_parameters():  # functional_call: the module itself is never modified
        assert torch.equal(p, before[n])
    # the same points, computed by changing a copy of the network in place
    for alpha, expected in ((-1.0, line[0]), (0.7, line[2])):
        copy = _builder(digits)(0)
        for n, p in copy.named_parameters():
            p.add_(alpha * directions[0][n])
        assert float(ce(copy.eval()(x), y)) == pytest.approx(expected, rel=1e-5)
    copy = _builder(digits)(0)
    for n, p in copy.named_parameters():
        p.add_(0.4 * directions[0][n] - 0.3 * directions[1][n])
    assert float(ce(copy.eval()(x), y)) == pytest.approx(grid[1][0], rel=1e-5)  # grid[i][j]: d1 = c[i], d2 = c[j]
    assert float(objective_at(model, before, ce, x, y)) == pytest.approx(line[1])


# --------------------------------------------------------------------------- learning-rate sweep
def test_lr_sweep_runs_exactly_the_listed_lrs_and_seeds_and_applies_each_lr(digits):
    build = _builder(digits)
    losses = {"baseline": baseline_loss("classification"), "learned": CompiledLoss(CE_EXPR, "classification")}
    runs = lr_sweep(losses, digits, build, lrs=[0.0, 0.5], seeds=[3, 4], steps=15, batch_size=32, momentum=0.5)
    assert [(r.lr, r.seed, r.method) for r in runs] == [
        (lr, seed, m) for lr in (0.0, 0.5) for seed in (3, 4) for m in ("baseline", "learned")]
    x_test, y_test = digits.x_test, digits.y_test
    untrained = {seed: metric(build(seed), x_test, y_test, "classification") for seed in (3, 4)}
    for r in runs:
        assert not r.diverged and math.isfinite(r.test_metric)
        if r.lr == 0.0:  # lr 0 leaves the network at its initialisation
            assert r.test_metric == untrained[r.seed]
        else:  # lr 0.5 was really applied: 15 steps learn digits well beyond chance
            assert r.test_metric < untrained[r.seed] - 0.2
    with pytest.raises(ValueError, match="learning rates"):
        lr_sweep(losses, digits, build, lrs=[-0.1], seeds=[0], steps=1)


def test_lr_sweep_settings_default_to_the_meta_test():
    exp = _exp(analysis={"lr_sweep": {"enabled": True}})
    assert lr_sweep_settings(exp) == {"lrs": [1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001], "seeds": [0, 1],
                                      "steps": 60}
    exp = _exp(analysis={"lr_sweep": {"enabled": True, "lrs": [0.2], "seeds": [7, 9], "steps": 5}})
    assert lr_sweep_settings(exp) == {"lrs": [0.2], "seeds": [7, 9], "steps": 5}


@pytest.fixture(scope="module")
def learned_loss_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("loss") / "best" / "loss.json"
    tree = parse("mul(-1, mul(add(y, 1), log(f)))")
    save_loss(path, tree, "classification", [1.0] * tree.num_edges, method="evomal")
    return path


def test_lr_sweep_stage_writes_the_table_summary_and_plot(learned_loss_file, tmp_path):
    exp = _exp(analysis={"lr_sweep": {"enabled": True, "lrs": [0.3, 0.03], "seeds": [1, 2], "steps": 8}})
    table, summary = tmp_path / "a" / "lr_sweep.tsv", tmp_path / "a" / "lr_sweep_summary.tsv"
    lr_sweep_stage({"evomal": learned_loss_file}, table, summary, exp=exp)
    frame = files.read_tsv(table)
    assert len(frame) == 2 * 2 * 2
    assert sorted(set(frame["lr"])) == [0.03, 0.3] and sorted(set(frame["seed"])) == [1, 2]
    assert set(frame["method"]) == {"baseline", "evomal"} and set(frame["metric"]) == {"error_rate"}
    summ = files.read_tsv(summary)
    assert list(zip(summ["lr"], summ["method"])) == [(0.3, "baseline"), (0.3, "evomal"), (0.03, "baseline"),
                                                    (0.03, "evomal")]
    for row in summ.itertuples():
        values = frame[(frame["lr"] == row.lr) & (frame["method"] == row.method)]["test_metric"]
        assert row.n == 2 and row.median == pytest.approx(values.median())
    # the same config gives the same files
    again = tmp_path / "b" / "lr_sweep.tsv"
    lr_sweep_stage({"evomal": learned_loss_file}, again, tmp_path / "b" / "s.tsv", exp=exp)
    assert again.read_bytes() == table.read_bytes()
    plot_lr_sweep(summary, tmp_path / "lr_sweep.png", table_tsv=table)
    check_png(tmp_path / "lr_sweep.png")


def test_landscape_stage_writes_the_grid_and_both_plots(learned_loss_file, tmp_path):
    exp = _exp(analysis={"landscape": {"enabled": True, "points_1d": 7, "points_2d": 5, "samples": 80, "steps": 10,
                                       "span": 0.8}})
    out = tmp_path / "landscape.json"
    landscape_stage({"evomal": learned_loss_file}, out, exp=exp)
    doc = read_landscape(out)
    assert doc["objective"] == "cross_entropy" and doc["samples"] == 80 and doc["train_seed"] == 0
    assert len(doc["coords_1d"]) == 7 and doc["coords_2d"][0] == -0.8 and doc["coords_2d"][-1] == 0.8
    assert list(doc["methods"]) == ["baseline", "evomal"]
    for entry in doc["methods"].values():
        assert len(entry["line"]) == 7 and [len(r) for r in entry["grid"]] == [5] * 5
        assert entry["line"][3] == pytest.approx(entry["center"]) and entry["grid"][2][2] == pytest.approx(entry["center"])
    plot_landscape(out, tmp_path / "l1.png", tmp_path / "l2.png")
    check_png(tmp_path / "l1.png")
    check_png(tmp_path / "l2.png")


# --------------------------------------------------------------------------- primitive statistics
def test_primitive_counts_of_known_expressions():
    counts = primitive_counts("add(mul(y, log(f)), -1)")
    assert list(counts) == list(PRIMITIVES)
    assert {k: v for k, v in counts.items() if v} == {"add": 1, "mul": 1, "log": 1}
    assert {k: v for k, v in primitive_counts(parse("mul(-1, mul(y, log(f)))")).items() if v} == {"mul": 2, "log": 1}
    assert sum(primitive_counts("sub(f, y)").values()) == 1 and sum(primitive_counts("f").values()) == 0
    usage = {u.primitive: u for u in primitive_usage([CE_EXPR, "square(sub(f, y))", "max(f, y)"])}
    assert (usage["mul"].occurrences, usage["mul"].in_expressions, usage["mul"].expressions) == (2, 1, 3)
    assert usage["mul"].share_of_nodes == pytest.approx(2 / 6)
    assert usage["sub"].share_of_expressions == pytest.approx(1 / 3) and usage["tanh"].occurrences == 0
    assert all(u.share_of_nodes == 0 for u in primitive_usage([]))


def _fitness_table(path, rows):
    frame = pd.DataFrame([{"id": f"g0-{i}", "expression": e, "origin": "init", "parents": "", "key": "",
                           "decision": d, "reason": "", "reuse_of": "", "fitness": 0.5}
                          for i, (e, d) in enumerate(rows)])
    files.write_tsv(path, frame)
    return path


def test_primitive_stats_count_best_losses_and_only_evaluated_candidates(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, expr in ((a, CE_EXPR), (b, "tanh(sub(f, y))")):
        save_loss(folder / "best" / "loss.json", parse(expr), "classification", [1.0] * parse(expr).num_edges)
    ta = _fitness_table(a / "gen_0" / "fitness.tsv", [(CE_EXPR, "evaluate"), ("abs(sub(f, y))", "rejected"),
                                                      ("sqrt(aq(f, y))", "evaluate")])
    tb = _fitness_table(b / "gen_0" / "fitness.tsv", [("tanh(sub(f, y))", "evaluate"), (CE_EXPR, "equivalent")])
    out = tmp_path / "stats.tsv"
    primitive_stats_stage({"a": {"best": a / "best/loss.json", "tables": [ta]},
                           "b": {"best": b / "best/loss.json", "tables": [tb]}}, out)
    table = files.read_tsv(out).set_index(["scope", "source", "primitive"])
    assert set(table.index.get_level_values("scope")) == {"a", "b", "all"}
    assert table.loc[("all", "best", "mul"), "occurrences"] == 2 and table.loc[("all", "best", "tanh"), "occurrences"] == 1
    assert table.loc[("all", "best", "mul"), "expressions"] == 2
    # evaluated: CE, sqrt(aq) and tanh(sub); the rejected abs and the equivalent CE are not counted
    assert table.loc[("all", "evaluated", "mul"), "expressions"] == 3
    assert table.loc[("all", "evaluated", "abs"), "occurrences"] == 0
    assert table.loc[("all", "evaluated", "mul"), "occurrences"] == 2
    assert table.loc[("a", "evaluated", "sqrt"), "in_expressions"] == 1 and table.loc[("b", "evaluated", "sqrt"), "in_expressions"] == 0
    plot_primitive_stats(out, tmp_path / "p.png")
    check_png(tmp_path / "p.png")


# --------------------------------------------------------------------------- config and targets
def test_analyses_are_off_by_default_and_each_adds_its_files():
    assert analysis_targets("results/tiny", _exp()) == []
    exp = _exp(analysis={"landscape": {"enabled": True}})
    assert analysis_targets("results/tiny", exp) == [f"results/tiny/{p}" for p in ANALYSIS_FILES["landscape"].values()]
    with pytest.raises(ConfigError, match=r"experiments\.tiny\.analysis\.lr_sweep\.lrs"):
        _exp(analysis={"lr_sweep": {"lrs": []}})
    with pytest.raises(ConfigError, match=r"experiments\.tiny\.analysis\.landscape.*allowed keys"):
        _exp(analysis={"landscape": {"point": 3}})
    with pytest.raises(ConfigError, match=r"experiments\.tiny\.analysis\.primitive_stats"):
        check_primitive_sources("tiny", {})
    # only GP searches are made of primitives (ML3 is a network, TaylorGLO a polynomial)
    assert [m for m in ("evomal", "gplfl", "baseline", "ml3", "taylorglo") if counts_primitives(m)] == ["evomal", "gplfl"]


# --------------------------------------------------------------------------- through the real snakemake
@pytest.mark.slow
def test_all_analyses_through_the_workflow(tmp_path):
    config = tiny_config(search={"population": 4, "generations": 1}, meta_test={"steps": 20, "seeds": [0], "eval_every": 10},
                         transfer=[],
                         analysis={"lr_sweep": {"enabled": True, "lrs": [0.5, 0.05], "seeds": [0, 1], "steps": 20},
                                   "landscape": {"enabled": True, "points_1d": 5, "points_2d": 3, "samples": 50,
                                                 "steps": 20},
                                   "primitive_stats": {"enabled": True}})
    # a baseline experiment in the run: it has no best loss, so primitive statistics skip it
    config["experiments"]["base"] = {**config["experiments"]["tiny"], "method": "baseline", "analysis": {}}
    config["run"] = ["tiny", "base"]
    write_config(tmp_path, config)
    snakemake(tmp_path)
    exp = tmp_path / "results" / "tiny"
    sweep = files.read_tsv(exp / ANALYSIS_FILES["lr_sweep"]["table"])
    assert sorted(zip(sweep["lr"], sweep["seed"], sweep["method"])) == sorted(
        (lr, s, m) for lr in (0.5, 0.05) for s in (0, 1) for m in ("baseline", "evomal"))
    landscape = read_landscape(exp / ANALYSIS_FILES["landscape"]["data"])
    assert list(landscape["methods"]) == ["baseline", "evomal"] and landscape["steps"] == 20
    stats = files.read_tsv(exp / ANALYSIS_FILES["primitive_stats"]["table"])
    assert set(stats["scope"]) == {"tiny", "all"}
    best = json.loads((exp / "best" / "loss.json").read_text())["expression"]
    mine = stats[(stats["scope"] == "all") & (stats["source"] == "best")].set_index("primitive")["occurrences"]
    assert mine.to_dict() == dict(primitive_counts(best))
    gen0 = files.read_tsv(exp / "gen_0" / "fitness.tsv")
    evaluated = stats[(stats["scope"] == "all") & (stats["source"] == "evaluated")]
    assert set(evaluated["expressions"]) == {int((gen0["decision"] == "evaluate").sum())}
    for outputs in ANALYSIS_FILES.values():
        for path in outputs.values():
            if path.endswith(".png"):
                check_png(exp / path)
    assert not (tmp_path / "results" / "base" / "analysis").exists()  # analyses are opt-in per experiment
    # a run without any search cannot count primitives: refused before any job runs
    config["run"] = ["base"]
    config["experiments"]["base"]["analysis"] = {"primitive_stats": {"enabled": True}}
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "experiments.base.analysis.primitive_stats" in proc.stdout + proc.stderr
