"""Selecting the loss to meta-test (DESIGN §1.6a): finalists on validation, anchors, references, the
fitness measure."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from evomal.gp.anchors import ANCHORS, anchor_expressions, anchor_population
from evomal.gp.operators import init_population
from evomal.learning.finalists import score_on_validation
from evomal.learning.fitness_measure import FitnessMeasure
from evomal.learning.training import metric, train
from evomal.losses.modules import CompiledLoss, baseline_loss
from evomal.losses.references import REFERENCES, reference_losses
from evomal.pipeline.config import ConfigError, load_schema, resolve_config
from evomal.pipeline.contract import learned_beats_baseline
from evomal.pipeline.selection import finalists_table, search_finalists
from evomal.tasks.models import build_model


def _entry(i, fitness, expression=None, generation=0, decision="evaluate"):
    return {"id": f"g{generation}-{i:03d}", "generation": generation, "expression": expression or f"e{i}",
            "key": f"k{i}", "decision": decision, "fitness": fitness, "signature": None}


# --------------------------------------------------------------------------- finalists
def test_search_finalists_are_the_best_distinct_finite_losses():
    archive = {"entries": [_entry(0, 0.5), _entry(1, "inf"), _entry(2, 0.2), _entry(3, 0.3, decision="rejected"),
                           _entry(4, 0.2, expression="e2", generation=1), _entry(5, 0.4), _entry(6, 0.1, generation=2)]}
    chosen = search_finalists(archive, 3)
    # sorted by fitness; the rejected, the infinite and the repeated expression (e2 again) are left out
    assert [e["id"] for e in chosen] == ["g2-006", "g0-002", "g0-005"]
    assert len(search_finalists(archive, 10)) == 4


def _scores(table):
    from evomal.learning.finalists import ValidationScore

    return [ValidationScore(name, seed, value, None) for (name, seed), value in table.items()]


def test_the_finalist_with_the_best_mean_validation_metric_is_selected():
    finalists = [_entry(0, 0.1), _entry(1, 0.2), _entry(2, 0.3)]
    scores = _scores({("baseline", 7): 0.30, ("baseline", 8): 0.32,
                      ("g0-000", 7): 0.35, ("g0-000", 8): 0.33,   # best search fitness, worse on validation
                      ("g0-001", 7): 0.28, ("g0-001", 8): 0.29,
                      ("g0-002", 7): 0.29, ("g0-002", 8): math.inf})
    frame = finalists_table(finalists, scores, [7, 8])
    assert list(frame["id"]) == ["baseline", "g0-000", "g0-001", "g0-002"]
    assert list(frame["selected"]) == [False, False, True, False]
    assert frame.loc[1, "validation_mean"] == pytest.approx(0.34)
    assert math.isinf(frame.loc[3, "validation_mean"])  # a diverged seed disqualifies
    assert list(frame.columns[5:7]) == ["seed_7", "seed_8"]
    assert learned_beats_baseline(frame)


def test_no_learned_finalist_beating_the_baseline_is_reported():
    scores = _scores({("baseline", 1): 0.2, ("g0-000", 1): 0.25})
    frame = finalists_table([_entry(0, 0.1)], scores, [1])
    assert frame["selected"].tolist() == [False, True]  # the best learned loss is still meta-tested
    assert not learned_beats_baseline(frame)


def test_finalists_are_scored_on_the_validation_split(digits):
    # validation labels permuted: a score read from the training or test split would be far lower
    gen = torch.Generator().manual_seed(0)
    task = dataclasses.replace(digits, y_val=digits.y_val[torch.randperm(len(digits.y_val), generator=gen)])
    build = lambda seed: build_model("mlp", task.input_shape, task.num_outputs, seed=seed, hidden=[32])  # noqa: E731
    kw = dict(steps=150, lr=0.1, momentum=0.9, batch_size=64)
    [score] = score_on_validation({"ce": baseline_loss("classification")}, task, build, seeds=[3], **kw)
    model = build(3)
    train(model, baseline_loss("classification"), task, seed=3, **kw)
    assert score.metric == pytest.approx(metric(model, task.x_val, task.y_val, task.kind))
    assert score.metric > 0.6  # chance on the permuted validation labels
    assert metric(model, task.x_test, task.y_test, task.kind) < 0.3
    assert metric(model, task.x_train, task.y_train, task.kind) < 0.3


def test_selection_seeds_must_be_disjoint_from_the_meta_test_seeds():
    config = {"run": ["e"], "experiments": {"e": {"dataset": "digits", "model": "mlp",
                                                  "selection": {"seeds": [1, 2]}, "meta_test": {"seeds": [2, 3]}}}}
    with pytest.raises(ConfigError, match=r"experiments.e.selection.seeds: must be disjoint .* shared: \[2\]"):
        resolve_config(config)
    config["experiments"]["e"]["selection"]["finalists"] = 0  # the reference rule needs no seeds
    resolve_config(config)


# --------------------------------------------------------------------------- anchors
def test_the_cross_entropy_anchor_is_cross_entropy():
    logits, target = torch.randn(16, 10, dtype=torch.float64), torch.randint(0, 10, (16,))
    ce = CompiledLoss(ANCHORS["classification"][0], "classification", torch.ones(5, dtype=torch.float64))
    assert ce(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)
    out, y = torch.randn(16, 1, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    mse = CompiledLoss(ANCHORS["regression"][0], "regression", torch.ones(3, dtype=torch.float64))
    assert mse(out, y).item() == pytest.approx(F.mse_loss(out, y).item(), rel=1e-12)


def test_anchors_replace_the_first_individuals_of_generation_0():
    population = init_population(8, seed=0)
    anchored = anchor_population(population, anchor_expressions("classification"))
    n = len(ANCHORS["classification"])
    assert [i.id for i in anchored] == [i.id for i in population]
    assert [i.expression for i in anchored[:n]] == list(ANCHORS["classification"])
    assert {i.origin for i in anchored[:n]} == {"anchor"} and anchored[n:] == population[n:]
    with pytest.raises(ValueError, match="lacks f"):
        anchor_expressions("regression", ["square(y)"])
    with pytest.raises(ValueError, match="do not fit"):
        anchor_population(population[:2], anchor_expressions("classification"))


# --------------------------------------------------------------------------- references
def test_references_apply_to_their_task_kind():
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    cls = reference_losses(["label_smoothing", "huber"], "classification")
    assert list(cls) == ["label_smoothing"]
    assert cls["label_smoothing"](logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=0.1).item())
    assert list(reference_losses(["label_smoothing", "huber"], "regression")) == ["huber"]
    with pytest.raises(KeyError, match="known: label_smoothing, huber"):
        reference_losses(["focal"], "classification")


def test_the_schema_lists_exactly_the_references():
    schema = load_schema()
    enum = schema["$defs"]["experiment"]["properties"]["meta_test"]["properties"]["references"]["items"]["enum"]
    assert enum == list(REFERENCES)


# --------------------------------------------------------------------------- fitness measure
def test_the_default_fitness_measure_is_the_reference():
    m = FitnessMeasure.from_config({"average_last": 1, "seeds": 1, "eval_every": None})
    assert m.is_reference and m.eval_every_for(500) is None and m.seeds_for(4) == [4]


def test_only_a_non_reference_fitness_measure_reaches_params_and_fingerprints():
    from evomal.learning.fitness_measure import non_reference

    assert non_reference({"average_last": 1, "seeds": 1, "eval_every": None}) == {}
    # eval_every 1 is not the default (null): changing it must rerun the evaluate jobs
    assert non_reference({"average_last": 3, "seeds": 1, "eval_every": 1}) == {"average_last": 3, "eval_every": 1}
    assert not FitnessMeasure(eval_every=1).is_reference


def test_fitness_averages_the_last_points_over_seeds():
    m = FitnessMeasure(average_last=2, seeds=2)
    assert m.eval_every_for(500) == 50
    seeds = m.seeds_for(4)
    assert seeds[0] == 4 and len(set(seeds)) == 2 and seeds == m.seeds_for(4)
    curves = [[(50, 1.0, 0.9), (100, 1.0, 0.5), (150, 1.0, 0.3)], [(50, 1.0, 0.8), (100, 1.0, 0.4), (150, 1.0, 0.2)]]
    assert m.value(curves) == pytest.approx(((0.5 + 0.3) / 2 + (0.4 + 0.2) / 2) / 2)
    assert math.isinf(m.value([[(1, 1.0, math.inf)]]))
    # the untrained network's step-0 point never counts, however many points are averaged
    assert FitnessMeasure(average_last=5).value([[(0, math.nan, 0.9), (50, 1.0, 0.4), (100, 1.0, 0.2)]]) == \
        pytest.approx(0.3)


def test_the_finalists_view_says_whether_a_learned_loss_beats_the_baseline(tmp_path):
    from evomal.core import files
    from evomal.results.report.finalists import finalists_sentence, finalists_view

    scores = _scores({("baseline", 1): 0.30, ("baseline", 2): 0.32, ("g0-000", 1): 0.25, ("g0-000", 2): 0.27})
    files.write_tsv(tmp_path / "finalists.tsv", finalists_table([_entry(0, 0.1)], scores, [1, 2]))
    frame = files.read_tsv(tmp_path / "finalists.tsv")  # as the summary and `evomal show` read it
    assert finalists_sentence(frame).startswith("The selected loss g0-000 beats the baseline on validation (0.26 ±")
    view = finalists_view(frame)
    assert list(view["selected"]) == ["", "yes"] and view.iloc[0, 1] == "(the task's own loss)"
    assert view.iloc[1, 3].startswith("0.26 ± 0.014")  # every validation figure carries its spread
    worse = _scores({("baseline", 1): 0.2, ("baseline", 2): 0.2, ("g0-000", 1): 0.3, ("g0-000", 2): 0.3})
    assert finalists_sentence(finalists_table([_entry(0, 0.1)], worse, [1, 2])).startswith(
        "No learned loss beats the baseline on validation")
