"""The package's shape (docs/architecture.md): layers as folders, imports only downwards, small modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "evomal"

#: Layer of each subpackage, bottom first; a module may import its own layer's package and lower layers.
#: Packages sharing a rank are independent of each other.
LAYERS = {"core": 0, "gp": 1, "losses": 2, "tasks": 2, "learning": 3, "methods": 4, "pipeline": 5,
          "results": 6, "cli": 7}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """evomal.* modules a file imports (all of them, or only those run at import time)."""
    modules = _modules()
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("evomal")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("evomal"):
            # `from package import submodule` depends on the submodule; any other name, on the module
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= subs if len(subs) == len(node.names) else subs | {node.module}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports")
    return {name for name in found if name in modules}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_at_least_six_subpackages():
    packages = [p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    assert len(packages) >= 6, packages
    assert {p.name for p in packages} | {"cli"} == set(LAYERS)


def test_no_module_is_crowded():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert max(sizes.values()) <= MAX_LINES, sorted(sizes.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.parametrize("module", sorted(m for m in _modules() if _layer(m)))
def test_imports_only_go_down(module):
    mine = _layer(module)
    for target in _imports(_modules()[module]):
        theirs = _layer(target)
        if theirs is None or theirs == mine:
            continue
        assert LAYERS[theirs] < LAYERS[mine], f"{module} (layer {mine}) imports {target} (layer {theirs})"


def test_no_import_cycle():
    graph = {m: _imports(p, top_level_only=True) - {m} for m, p in _modules().items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The guard itself: a learning module importing the pipeline is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from evomal.pipeline.contract import DECISIONS\n")
    assert "evomal.pipeline.contract" in _imports(bad)
    assert LAYERS["pipeline"] > LAYERS["learning"]
