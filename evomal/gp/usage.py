"""How often each primitive of the search space (``PRIMITIVES``) is used by a set of expressions."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from evomal.gp.expressions import Node, parse
from evomal.gp.primitives import PRIMITIVES


def primitive_counts(tree: Node | str) -> Counter:
    """Occurrences of each primitive in one expression (every primitive is a key, unused ones 0)."""
    tree = parse(tree) if isinstance(tree, str) else tree
    counts = Counter({name: 0 for name in PRIMITIVES})
    counts.update(node.op for node in tree.preorder() if node.op in PRIMITIVES)
    return counts


@dataclass(frozen=True)
class PrimitiveUsage:
    """One primitive over ``expressions`` expressions: ``occurrences`` nodes in all, used by ``in_expressions``."""

    primitive: str
    occurrences: int
    in_expressions: int
    expressions: int
    share_of_nodes: float  # occurrences / all primitive nodes of the set
    share_of_expressions: float  # in_expressions / expressions


def primitive_usage(expressions: Iterable[Node | str]) -> list[PrimitiveUsage]:
    """Usage of every primitive, in the order of ``PRIMITIVES``; shares are 0 for an empty set."""
    total, present, n = Counter(), Counter(), 0
    for expr in expressions:
        counts = primitive_counts(expr)
        total.update(counts)
        present.update(name for name, c in counts.items() if c)
        n += 1
    nodes = sum(total.values())
    return [PrimitiveUsage(name, total[name], present[name], n, total[name] / nodes if nodes else 0.0,
                           present[name] / n if n else 0.0) for name in PRIMITIVES]
