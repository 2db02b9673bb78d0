"""Loss expressions as immutable trees: text and JSON forms, measures, repair, SymPy conversion.

Text form is prefix notation, e.g. ``add(mul(y, log(f)), -1)``; ``parse(str(t)) == t`` for every tree.
JSON form is nested lists: ``["add", ["mul", "y", ["log", "f"]], "-1"]``.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator

from evomal.gp.primitives import CONSTANTS, PRIMITIVES, REPAIR_OPS, TERMINALS, VARIABLES, sympy_function


class ExpressionError(ValueError):
    """An expression that cannot be parsed or is not a valid loss."""


@dataclass(frozen=True)
class Node:
    op: str
    children: tuple["Node", ...] = ()

    def __post_init__(self) -> None:
        if self.op in TERMINALS:
            if self.children:
                raise ExpressionError(f"terminal {self.op!r} takes no arguments")
        elif self.op in PRIMITIVES:
            arity = PRIMITIVES[self.op].arity
            if len(self.children) != arity:
                raise ExpressionError(f"{self.op} takes {arity} argument(s), got {len(self.children)}")
        else:
            raise ExpressionError(f"unknown symbol {self.op!r}; known: {', '.join(sorted(PRIMITIVES) + list(TERMINALS))}")

    @property
    def is_terminal(self) -> bool:
        return not self.children

    def __str__(self) -> str:
        if not self.children:
            return self.op
        return f"{self.op}({', '.join(str(c) for c in self.children)})"

    def preorder(self) -> Iterator["Node"]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    @property
    def size(self) -> int:
        return sum(1 for _ in self.preorder())

    @property
    def height(self) -> int:
        """Edges on the longest root-to-leaf path (a lone terminal has height 0), as DEAP counts."""
        if not self.children:
            return 0
        return 1 + max(c.height for c in self.children)

    @property
    def num_edges(self) -> int:
        """One trainable weight per edge child -> parent (DESIGN §1.3)."""
        return self.size - 1

    def variables(self) -> set[str]:
        return {n.op for n in self.preorder() if n.op in VARIABLES}


def to_json(tree: Node):
    if not tree.children:
        return tree.op
    return [tree.op, *(to_json(c) for c in tree.children)]


def from_json(obj) -> Node:
    if isinstance(obj, str):
        return Node(obj)
    if isinstance(obj, list) and obj and isinstance(obj[0], str):
        return Node(obj[0], tuple(from_json(c) for c in obj[1:]))
    raise ExpressionError(f"not an expression in JSON form: {obj!r}")


_TOKEN = re.compile(r"\s*(?:(?P<num>[+-]?\d+(?:\.\d*)?)|(?P<name>[A-Za-z_]\w*)|(?P<punct>[(),]))")


def parse(text: str) -> Node:
    """Parse the prefix text form; errors name the expression and the character position."""
    pos = 0

    def fail(msg: str, at: int):
        raise ExpressionError(f"cannot parse expression {text!r} at position {at}: {msg}")

    def token():
        nonlocal pos
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            rest = text[pos:].strip()
            return (None, None, len(text) - len(text[pos:].lstrip()) if rest else len(text))
        start = m.start(m.lastgroup)
        pos = m.end()
        return (m.lastgroup, m.group(m.lastgroup), start)

    def peek():
        nonlocal pos
        saved = pos
        tok = token()
        pos = saved
        return tok

    def expr() -> Node:
        kind, value, at = token()
        if kind is None:
            fail("expected a symbol" if at >= len(text) else f"unexpected character {text[at]!r}", at)
        if kind == "num":
            canon = {"1": "1", "+1": "1", "1.0": "1", "+1.0": "1", "-1": "-1", "-1.0": "-1"}.get(value)
            if canon is None:
                fail(f"only the constants 1 and -1 exist, got {value}", at)
            return Node(canon)
        if kind == "punct":
            fail(f"expected a symbol, got {value!r}", at)
        if value in VARIABLES:
            return Node(value)
        if value not in PRIMITIVES:
            fail(f"unknown symbol {value!r}; known: {', '.join(sorted(PRIMITIVES) + list(TERMINALS))}", at)
        prim = PRIMITIVES[value]
        k, v, a = token()
        if v != "(":
            fail(f"expected '(' after {value}", a)
        args = []
        for i in range(prim.arity):
            if i:
                k, v, a = token()
                if v != ",":
                    fail(f"{value} takes {prim.arity} arguments; expected ','", a)
            args.append(expr())
        k, v, a = token()
        if v != ")":
            fail(f"{value} takes {prim.arity} argument(s); expected ')'", a)
        return Node(value, tuple(args))

    tree = expr()
    kind, value, at = peek()
    if kind is not None or text[pos:].strip():
        fail("unexpected text after the expression", at)
    return tree


def replace_at(tree: Node, index: int, new: Node) -> Node:
    """Return ``tree`` with its ``index``-th node in preorder replaced by ``new``."""
    counter = 0

    def rebuild(node: Node) -> Node:
        nonlocal counter
        here = counter
        counter += 1
        if here == index:
            counter += node.size - 1
            return new
        return Node(node.op, tuple(rebuild(c) for c in node.children))

    return rebuild(tree)


def repair(tree: Node, rng: random.Random) -> tuple[Node, bool]:
    """Guarantee that both ``y`` and ``f`` appear (DESIGN §1.1).

    A random terminal is replaced by ``op(y, f)``, arguments in random order, op from add/sub/mul/aq.
    Returns the tree and whether it was changed.
    """
    if tree.variables() >= set(VARIABLES):
        return tree, False
    terminals = [i for i, n in enumerate(tree.preorder()) if n.is_terminal]
    index = rng.choice(terminals)
    args = [Node("y"), Node("f")]
    rng.shuffle(args)
    op = rng.choice(REPAIR_OPS)
    return replace_at(tree, index, Node(op, tuple(args))), True


def to_sympy(tree: Node, exact: bool = True):
    """SymPy expression over real symbols y and f (see primitives.sympy_function for ``exact``)."""
    import sympy as sp

    symbols = {"y": sp.Symbol("y", real=True), "f": sp.Symbol("f", real=True)}

    def walk(node: Node):
        if node.op in symbols:
            return symbols[node.op]
        if node.op in CONSTANTS:
            return sp.Integer(int(CONSTANTS[node.op]))
        return sympy_function(node.op, exact)(*(walk(c) for c in node.children))

    return walk(tree)
