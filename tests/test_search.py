"""GP operators: initialisation, breeding, determinism, and no shared global state."""
import json
import math
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from evomal.gp.expressions import parse
from evomal.gp.operators import Individual, breed, derive_rng, from_deap, init_population, to_deap


def _fitness(population, seed=0):
    rng = random.Random(seed)
    return {ind.id: rng.random() for ind in population}


def _dicts(population):
    return [ind.to_dict() for ind in population]


def _evolve(generations, *, seed=1, size=25, max_height=10, **kw):
    pop = init_population(size, seed=seed, max_height=max_height)
    history = [pop]
    for g in range(1, generations + 1):
        pop = breed(pop, _fitness(pop, g), seed=seed, generation=g, size=size, max_height=max_height, **kw)
        history.append(pop)
    return history


# --------------------------------------------------------------------------- records and helpers


def test_individual_round_trips_through_json():
    ind = Individual("g3-017", "add(mul(y, log(f)), -1)", ("g2-001", "g2-004"), "crossover", True)
    assert Individual.from_dict(json.loads(json.dumps(ind.to_dict()))) == ind
    assert Individual.from_dict({"id": "g0-000", "expression": "add(y, f)", "origin": "init"}).parents == ()
    with pytest.raises(ValueError):
        Individual("x", "y", (), "bogus")


def test_derive_rng_is_deterministic_and_separates_parts():
    draw = lambda *a: derive_rng(*a).random()  # noqa: E731
    assert draw(1, "breed", 3) == draw(1, "breed", 3)
    assert len({draw(1, "breed", 3), draw(1, "breed", 4), draw(2, "breed", 3), draw(1, "breed", "3")}) == 4


def test_deap_conversion_round_trips():
    for ind in init_population(50, seed=4, init_height=(0, 6), max_height=10):
        tree = parse(ind.expression)
        deap_tree = to_deap(tree)
        assert len(deap_tree) == tree.size and deap_tree.height == tree.height
        assert from_deap(deap_tree) == tree
    assert from_deap(to_deap(parse("mul(1, -1)"))) == parse("mul(1, -1)")


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("size, height", [(25, (2, 4)), (7, (0, 1)), (40, (3, 6))])
def test_init_population(size, height):
    pop = init_population(size, seed=3, init_height=height)
    assert len(pop) == size
    assert len({ind.id for ind in pop}) == size
    for ind in pop:
        tree = parse(ind.expression)
        assert tree.variables() == {"y", "f"}
        # repair may deepen a tree by one where it replaced a deepest terminal
        assert height[0] <= tree.height <= height[1] + (1 if ind.repaired else 0)
        assert ind.origin == "init" and ind.parents == ()


def test_init_is_seeded():
    assert init_population(25, seed=5) == init_population(25, seed=5)
    assert init_population(25, seed=5) != init_population(25, seed=6)


def test_init_height_must_leave_room_for_repair():
    with pytest.raises(ValueError):
        init_population(5, seed=0, init_height=(2, 10), max_height=10)


def test_population_larger_than_the_number_of_distinct_trees():
    # Height-0 trees repair to op(y, f): only 8 distinct trees exist.
    pop = init_population(50, seed=0, init_height=(0, 0), max_height=2)
    assert len(pop) == 50 and len({i.expression for i in pop}) <= 8
    nxt = breed(pop, {}, seed=0, generation=1, size=50, max_height=2)
    assert len(nxt) == 50


# --------------------------------------------------------------------------- breeding


def test_breed_is_reproducible_in_process():
    pop = init_population(25, seed=1)
    fit = _fitness(pop)
    a = breed(pop, fit, seed=1, generation=1, size=25)
    b = breed(list(pop), dict(fit), seed=1, generation=1, size=25)
    assert _dicts(a) == _dicts(b)


def test_breed_depends_on_generation_and_seed():
    pop = init_population(25, seed=1)
    fit = _fitness(pop)
    base = _dicts(breed(pop, fit, seed=1, generation=1, size=25))
    assert base != _dicts(breed(pop, fit, seed=1, generation=2, size=25))
    assert base != _dicts(breed(pop, fit, seed=2, generation=1, size=25))


def test_breed_output_is_well_formed():
    history = _evolve(15)
    for g, pop in enumerate(history[1:], start=1):
        previous = {ind.id for ind in history[g - 1]}
        assert len(pop) == 25
        assert [ind.id for ind in pop] == [f"g{g}-{i:03d}" for i in range(25)]
        origins = Counter(ind.origin for ind in pop)
        assert origins["elite"] == 2  # ceil(0.05 * 25)
        for ind in pop:
            assert parse(ind.expression).variables() == {"y", "f"}
            assert set(ind.parents) <= previous and ind.parents
            assert len(ind.parents) == (2 if ind.origin == "crossover" else 1)
    total = Counter(ind.origin for pop in history[1:] for ind in pop)
    assert total["crossover"] > total["mutation"] > 0 and total["copy"] > 0


def test_elitism_keeps_the_best_unchanged():
    pop = init_population(20, seed=2)
    fit = {ind.id: float(i) for i, ind in enumerate(reversed(pop))}  # the last is the best
    fit[pop[3].id] = math.inf
    out = breed(pop, fit, seed=2, generation=1, size=20, elitism=0.15)  # ceil(3.0) = 3
    elites = [ind for ind in out if ind.origin == "elite"]
    assert [e.parents for e in elites] == [(pop[-1].id,), (pop[-2].id,), (pop[-3].id,)]
    assert [e.expression for e in elites] == [pop[-1].expression, pop[-2].expression, pop[-3].expression]
    assert out[:3] == elites


def test_elite_ties_are_broken_by_position_and_inf_is_worst():
    pop = init_population(10, seed=2)
    fit = {ind.id: 1.0 for ind in pop}
    fit[pop[0].id] = math.nan  # a NaN counts as worst, like a missing value
    del fit[pop[1].id]
    out = breed(pop, fit, seed=0, generation=1, size=10, elitism=0.3)
    assert [e.parents[0] for e in out if e.origin == "elite"] == [pop[2].id, pop[3].id, pop[4].id]


@pytest.mark.parametrize("elitism, expected", [(0.0, 0), (1.0, 12), (0.07, 1)])
def test_elite_count(elitism, expected):
    pop = init_population(12, seed=2)
    out = breed(pop, _fitness(pop), seed=0, generation=1, size=12, elitism=elitism)
    assert sum(ind.origin == "elite" for ind in out) == expected


def test_height_limit_holds():
    for pop in _evolve(20, seed=4, max_height=6):
        assert all(parse(ind.expression).height <= 6 for ind in pop)


def test_tournament_prefers_lower_fitness():
    pop = init_population(20, seed=8)
    fit = {ind.id: 50.0 for ind in pop}
    best, worst = pop[5].id, pop[12].id
    fit[best], fit[worst] = 0.0, 100.0
    picks = Counter()
    for g in range(1, 21):  # copies only, so each slot's parent is a tournament winner
        out = breed(pop, fit, seed=8, generation=g, size=20, crossover=0.0, mutation=0.0, elitism=0.0)
        assert all(ind.origin == "copy" for ind in out)
        picks.update(ind.parents[0] for ind in out)
    # P(best wins one tournament of 4 among 20) = 1 - 0.95^4 = 0.185; the worst wins only alone.
    assert picks[best] > 40
    assert picks[worst] <= 2


@pytest.mark.parametrize(
    "size, tournament, fitness",
    [(1, 4, "random"), (5, 50, "random"), (25, 4, "inf"), (25, 4, "missing"), (3, 1, "random")],
)
def test_edge_cases(size, tournament, fitness):
    pop = init_population(size, seed=6)
    fit = {"random": _fitness(pop), "inf": {i.id: math.inf for i in pop}, "missing": {}}[fitness]
    out = breed(pop, fit, seed=6, generation=1, size=size, tournament=tournament)
    assert len(out) == size
    out2 = breed(out, fit, seed=6, generation=2, size=size + 3, tournament=tournament)
    assert len(out2) == size + 3


def test_invalid_arguments():
    pop = init_population(5, seed=0)
    with pytest.raises(ValueError):
        breed([], {}, seed=0, generation=1, size=5)
    with pytest.raises(ValueError):
        breed(pop, {}, seed=0, generation=1, size=5, crossover=0.8, mutation=0.3)
    with pytest.raises(ValueError):
        breed(pop, {}, seed=0, generation=1, size=0)


# --------------------------------------------------------------------------- global state


def test_global_random_state_is_untouched():
    random.seed(2024)
    state = random.getstate()
    pop = init_population(25, seed=1)
    breed(pop, _fitness(pop), seed=1, generation=1, size=25)
    assert random.getstate() == state


def test_no_deap_creator_classes():
    from deap import creator

    before = dict(vars(creator))
    _evolve(3)
    assert dict(vars(creator)) == before


def test_threads_give_identical_results():
    pop = init_population(25, seed=1)
    fit = _fitness(pop)
    expected = [_dicts(breed(pop, fit, seed=1, generation=g, size=25)) for g in range(1, 9)]
    results = {}

    def work(g):
        results[g] = _dicts(breed(pop, fit, seed=1, generation=g, size=25))

    threads = [threading.Thread(target=work, args=(g,)) for g in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[g] for g in range(1, 9)] == expected


_SUBPROCESS = """
import json, sys
from deap import creator
before = sorted(vars(creator))
from evomal.gp.operators import breed, init_population
args = json.loads(sys.stdin.read())
pop = init_population(25, seed=1)
out = breed(pop, args["fitness"], seed=1, generation=1, size=25)
print(json.dumps({"init": [i.to_dict() for i in pop], "bred": [i.to_dict() for i in out],
                  "creator_unchanged": sorted(vars(creator)) == before}))
"""


def test_identical_in_a_fresh_process():
    pop = init_population(25, seed=1)
    fit = _fitness(pop)
    out = breed(pop, fit, seed=1, generation=1, size=25)
    env = dict(os.environ, PYTHONHASHSEED="4242")
    proc = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS], input=json.dumps({"fitness": fit}), capture_output=True,
        text=True, env=env, check=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(proc.stdout)
    assert result["init"] == _dicts(pop)
    assert result["bred"] == _dicts(out)
    assert result["creator_unchanged"]
