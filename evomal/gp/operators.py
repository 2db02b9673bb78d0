"""Genetic programming over loss expressions (DESIGN §1.2), using DEAP's tree operators.

Reproducibility contract: a generation depends only on (seed, generation) and its input
population and fitness, never on process, thread or the caller's RNG state. DEAP's generators,
crossover, mutation and selection draw from the global ``random`` module, so every DEAP call runs
inside :func:`_seeded_global_random`, which reseeds that module under a lock and restores it after.
No DEAP ``creator`` classes are made: trees are converted to and from :class:`deap.gp.PrimitiveTree`
around each operator, and selection uses light local records.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import random
import threading
from dataclasses import dataclass
from typing import Iterator

from evomal.gp.expressions import Node, parse, repair
from evomal.gp.primitives import CONSTANTS, PRIMITIVES, VARIABLES

ORIGINS = ("init", "anchor", "crossover", "mutation", "copy", "elite")

#: DEAP terminal names of our constants (DEAP needs identifiers; "1"/"-1" would be evaluated).
_CONSTANT_NAMES = {"1": "one", "-1": "minus_one"}
_FROM_DEAP_NAME = {v: k for k, v in _CONSTANT_NAMES.items()}

# Guards the global `random` state while DEAP draws from it; jobs may run in threads of one process.
_GLOBAL_RANDOM_LOCK = threading.Lock()


@dataclass(frozen=True)
class Individual:
    id: str  # unique within a run: "g<generation>-<slot>"
    expression: str  # text form, see expressions.parse
    parents: tuple[str, ...]  # ids in the previous generation; () for init
    origin: str  # one of ORIGINS
    repaired: bool = False  # repair (DESIGN §1.1) changed the tree

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {self.origin!r}")
        # Accept lists (e.g. straight from JSON) but store a tuple so the record stays hashable.
        object.__setattr__(self, "parents", tuple(self.parents))

    @property
    def tree(self) -> Node:
        return parse(self.expression)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "expression": self.expression,
            "parents": list(self.parents),
            "origin": self.origin,
            "repaired": self.repaired,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Individual":
        return cls(
            id=str(d["id"]),
            expression=str(d["expression"]),
            parents=tuple(d.get("parents", ())),
            origin=str(d["origin"]),
            repaired=bool(d.get("repaired", False)),
        )


# --------------------------------------------------------------------------- randomness


def derive_rng(seed: int, *parts: int | str) -> random.Random:
    """A ``random.Random`` seeded from ``seed`` and ``parts`` through SHA-256.

    Python's ``hash()`` of str is salted per process, so it cannot be used here. Types are part of
    the digest so that ``derive_rng(1, 2)`` and ``derive_rng(1, "2")`` differ.
    """
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in (int(seed), *parts))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest, "big"))


@contextlib.contextmanager
def _seeded_global_random(rng: random.Random) -> Iterator[None]:
    """Run a block with the global ``random`` module seeded from ``rng``; restore it afterwards.

    The lock serialises threads of this process that go through here; code elsewhere that uses the
    global ``random`` concurrently from another thread would still interleave with it.
    """
    with _GLOBAL_RANDOM_LOCK:
        saved = random.getstate()
        random.seed(rng.getrandbits(64))
        try:
            yield
        finally:
            random.setstate(saved)


def _id(generation: int, slot: int) -> str:
    return f"g{generation}-{slot:03d}"


# --------------------------------------------------------------------------- DEAP bridge


@functools.lru_cache(maxsize=None)
def primitive_set():
    """DEAP PrimitiveSet of the search space: our 12 primitives, y, f and the constants 1, -1.

    Built once per process and never mutated afterwards, so sharing it between threads is safe.
    """
    from deap import gp

    pset = gp.PrimitiveSet("evomal", 0)
    for prim in PRIMITIVES.values():
        pset.addPrimitive(prim.torch_fn, prim.arity, name=prim.name)
    for name in VARIABLES:
        pset.addTerminal(name, name=name)
    for text, value in CONSTANTS.items():
        pset.addTerminal(value, name=_CONSTANT_NAMES[text])
    return pset


def to_deap(tree: Node):
    from deap import gp

    mapping = primitive_set().mapping
    return gp.PrimitiveTree([mapping[_CONSTANT_NAMES.get(n.op, n.op)] for n in tree.preorder()])


def from_deap(expr) -> Node:
    """Rebuild a Node tree from DEAP's preorder list (consumed back to front with a stack)."""
    stack: list[Node] = []
    for item in reversed(list(expr)):
        name = _FROM_DEAP_NAME.get(item.name, item.name)
        children = tuple(stack.pop() for _ in range(item.arity))
        stack.append(Node(name, children))
    if len(stack) != 1:
        raise ValueError(f"not a single complete tree: {len(stack)} roots")
    return stack[0]


def _generate(height: tuple[int, int]) -> Node:
    """Ramped half-and-half tree (DEAP genHalfAndHalf); call inside _seeded_global_random."""
    from deap import gp

    lo, hi = height
    return from_deap(gp.genHalfAndHalf(primitive_set(), min_=lo, max_=hi))


def _crossover(a: Node, b: Node) -> Node:
    """One-point crossover (DEAP cxOnePoint); the first child: ``a`` with a subtree of ``b``."""
    from deap import gp

    child, _ = gp.cxOnePoint(to_deap(a), to_deap(b))
    return from_deap(child)


def _mutate(a: Node, height: tuple[int, int]) -> Node:
    """Subtree mutation (DEAP mutUniform) with a half-and-half subtree of the given height."""
    from deap import gp

    lo, hi = height
    pset = primitive_set()
    new_subtree = functools.partial(gp.genHalfAndHalf, min_=lo, max_=hi)
    (child,) = gp.mutUniform(to_deap(a), expr=new_subtree, pset=pset)
    return from_deap(child)


# --------------------------------------------------------------------------- initialisation


def _check_height_range(name: str, height: tuple[int, int]) -> tuple[int, int]:
    lo, hi = (int(h) for h in height)
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} must be (min, max) with 0 <= min <= max, got {height!r}")
    return lo, hi


def init_population(
    size: int, *, seed: int, init_height: tuple[int, int] = (2, 4), max_height: int = 10
) -> list[Individual]:
    """Generation 0: ``size`` ramped half-and-half trees, each repaired to contain y and f.

    Heights lie in ``init_height``, plus one where repair replaced a deepest terminal by op(y, f).
    Duplicates are allowed (the symbolic-equivalence filter shares their evaluation).
    """
    if size < 1:
        raise ValueError(f"population size must be >= 1, got {size}")
    lo, hi = _check_height_range("init_height", init_height)
    if hi + 1 > max_height:
        raise ValueError(f"init_height max {hi} + 1 (repair) exceeds max_height {max_height}")
    rng = derive_rng(seed, "init")
    population = []
    with _seeded_global_random(rng):
        for slot in range(size):
            tree, changed = repair(_generate((lo, hi)), rng)
            population.append(Individual(_id(0, slot), str(tree), (), "init", changed))
    return population


# --------------------------------------------------------------------------- breeding


@dataclass(frozen=True)
class _Contender:
    """What selTournament compares: ``score`` is minus the fitness, since DEAP's max() picks."""

    position: int
    score: float


def _fitness_of(ind: Individual, fitness: dict[str, float]) -> float:
    value = fitness.get(ind.id)
    if value is None:
        return math.inf
    value = float(value)
    return math.inf if math.isnan(value) else value


def _elite_positions(fits: list[float], count: int) -> list[int]:
    """Positions of the ``count`` best (lowest) fitnesses; ties keep population order."""
    return sorted(range(len(fits)), key=lambda i: (fits[i], i))[:count]


def _tournament(fits: list[float], k: int, tournsize: int) -> list[int]:
    """k tournament winners (positions) by DEAP selTournament; call inside _seeded_global_random."""
    from deap import tools

    contenders = [_Contender(i, -f) for i, f in enumerate(fits)]
    return [c.position for c in tools.selTournament(contenders, k, tournsize, fit_attr="score")]


def _offspring(
    parent: Individual,
    pool: list[Individual],
    rng: random.Random,
    *,
    crossover: float,
    mutation: float,
    mutation_height: tuple[int, int],
) -> tuple[Node, tuple[str, ...], str]:
    """One variation (DEAP varOr style: one draw picks crossover, else mutation, else copy).

    The crossover mate is drawn uniformly from the tournament winners, as in the reference code.
    """
    draw = rng.random()
    tree = parent.tree
    if draw < crossover:
        mate = pool[rng.randrange(len(pool))]
        return _crossover(tree, mate.tree), (parent.id, mate.id), "crossover"
    if draw < crossover + mutation:
        return _mutate(tree, mutation_height), (parent.id,), "mutation"
    return tree, (parent.id,), "copy"


def breed(
    population: list[Individual],
    fitness: dict[str, float],
    *,
    seed: int,
    generation: int,
    size: int,
    crossover: float = 0.7,
    mutation: float = 0.25,
    tournament: int = 4,
    max_height: int = 10,
    elitism: float = 0.05,
    mutation_height: tuple[int, int] = (0, 2),
) -> list[Individual]:
    """Generation ``generation`` from the previous one and its fitness (lower is better).

    A missing or NaN fitness counts as +inf. The best ceil(elitism * size) survive unchanged
    ("elite"); the other slots come from tournament winners by crossover, mutation or copy, then
    repair; an offspring taller than ``max_height`` is replaced by its parent ("copy").
    """
    if not population:
        raise ValueError("cannot breed from an empty population")
    if size < 1:
        raise ValueError(f"population size must be >= 1, got {size}")
    if tournament < 1:
        raise ValueError(f"tournament size must be >= 1, got {tournament}")
    if not (0.0 <= crossover and 0.0 <= mutation and crossover + mutation <= 1.0):
        raise ValueError(f"need crossover, mutation >= 0 and crossover + mutation <= 1, got {crossover}, {mutation}")
    if not 0.0 <= elitism <= 1.0:
        raise ValueError(f"elitism must be in [0, 1], got {elitism}")
    mutation_height = _check_height_range("mutation_height", mutation_height)

    fits = [_fitness_of(ind, fitness) for ind in population]
    # round() so that e.g. 0.07 * 100 = 7.000000000000001 does not become 8 elites
    n_elite = min(size, math.ceil(round(elitism * size, 9)))
    result = [
        Individual(_id(generation, slot), population[pos].expression, (population[pos].id,), "elite")
        for slot, pos in enumerate(_elite_positions(fits, n_elite))
    ]

    rng = derive_rng(seed, "breed", generation)
    with _seeded_global_random(rng):
        winners = [population[i] for i in _tournament(fits, size - n_elite, tournament)]
        for offset, parent in enumerate(winners):
            slot = n_elite + offset
            tree, parents, origin = _offspring(
                parent, winners, rng, crossover=crossover, mutation=mutation, mutation_height=mutation_height
            )
            tree, changed = repair(tree, rng)
            if tree.height > max_height:
                tree, parents, origin, changed = parent.tree, (parent.id,), "copy", False
            result.append(Individual(_id(generation, slot), str(tree), parents, origin, changed))
    return result
