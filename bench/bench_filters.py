"""Benchmark of the symbolic-equivalence filter (DESIGN §1.5.1): how much it merges, and is it sound?

    .venv/bin/python bench/bench_filters.py              # 3,000 fresh expressions, writes its docs section
    .venv/bin/python bench/bench_filters.py --n 7500     # more
    .venv/bin/python bench/bench_filters.py --baseline /tmp/canonical_old.py   # and an older version

Expressions come from the project's own GP, as the pipeline makes them: per seed, init_population
(25) and two bred generations (evomal.gp.soundness.sample_expressions). Printed: distinct strings,
distinct keys, merges per 1,000 expressions (all, and beyond identical strings), the keys that fell
back to the structural form, the key groups found unsound (pairs of distinct expressions with one key
that differ in value or d/df at the check points, confirmed in exact arithmetic; must be 0), the
expressions that differ from the function their key denotes (must be 0; only for this project's
module), and keys per second (distinct strings keyed in this process, cold caches).

``--module PATH`` keys with another canonical.py instead, ``--baseline PATH`` in addition (a second
row), e.g. an older one from git: ``git show <commit>:evomal/gp/canonical.py > /tmp/canonical_old.py``;
a key that raises counts as an error and the expression keeps its own string as key. The
"## Symbolic filter: soundness and merges" section of docs/benchmarks.md is replaced (only that
section), unless --no-write or --module is given.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evomal.gp.soundness import (  # noqa: E402
    find_disagreements,
    find_key_disagreements,
    group_by_key,
    sample_expressions,
)

TITLE = "## Symbolic filter: soundness and merges"


def load_module(path: str | None):
    if path is None:
        from evomal.gp import canonical

        return canonical
    spec = importlib.util.spec_from_file_location("canonical_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(args) -> dict:
    module = load_module(args.module)
    expressions = sample_expressions(args.n, first_seed=args.first_seed)
    distinct = list(dict.fromkeys(expressions))
    module.canonical_key("add(y, f)")  # SymPy's lazy imports, not keying work
    keys: dict[str, str] = {}
    errors = structural = 0
    start = time.perf_counter()
    for text in distinct:
        try:
            ck = module.canonical_key(text)
            keys[text] = ck.key
            structural += ck.method == "structural"
        except Exception:  # an old module may raise; the expression then keeps its own key
            keys[text] = "error:" + text
            errors += 1
    seconds = time.perf_counter() - start
    groups = group_by_key(expressions, keys.__getitem__)
    bad = find_disagreements(groups)
    bad_groups = {d.key for d in bad}
    key_bad = find_key_disagreements(keys) if args.module is None else None
    n_keys = len(set(keys.values()))
    return {
        "n": len(expressions), "strings": len(distinct), "keys": n_keys, "structural": structural,
        "errors": errors, "merged_groups": sum(len(g) > 1 for g in groups.values()),
        "merges": 1000 * (len(expressions) - n_keys) / len(expressions),
        "merges_beyond": 1000 * (len(distinct) - n_keys) / len(expressions),
        "bad_groups": len(bad_groups), "bad_pairs": len({(d.a, d.b) for d in bad}),
        "bad_gradient_only": len({(d.a, d.b) for d in bad if d.gradient_only}),
        "key_bad": key_bad, "seconds": seconds,
        "examples": [next(d for d in bad if d.key == k) for k in dict.fromkeys(d.key for d in bad)][:5],
    }


def render(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "| keyed by | expressions | distinct strings | distinct keys | merges / 1,000 | beyond identical "
        "strings / 1,000 | structural keys | key errors | unsound key groups (pairs; gradient only) "
        "| expressions off their key | keys / s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        key_bad = "n/a" if r["key_bad"] is None else str(len(r["key_bad"]))
        lines.append(
            f"| {label} | {r['n']} | {r['strings']} | {r['keys']} | {r['merges']:.1f} | {r['merges_beyond']:.1f} "
            f"| {r['structural']} | {r['errors']} | **{r['bad_groups']}** ({r['bad_pairs']}; "
            f"{r['bad_gradient_only']}) | {key_bad} | {r['strings'] / r['seconds']:.0f} |")
    for label, r in rows:
        if r["examples"]:
            lines.append(f"\nUnsound groups of {label}, one pair each (the first {len(r['examples'])}):\n")
        for d in r["examples"]:
            lines.append(f"- `{d.a}` ~ `{d.b}` (key `{d.key}`) at y={d.y!r}, f={d.f!r}: "
                         f"values {d.values[0]:.6g} / {d.values[1]:.6g}, d/df {d.values[2]:.6g} / {d.values[3]:.6g}")
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's own section (from its title to the next '## '), keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^" + re.escape(TITLE) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="expressions (default 3000)")
    p.add_argument("--first-seed", type=int, default=1000, help="first GP seed (the tests use 0-69)")
    p.add_argument("--module", default=None, help="path of another canonical.py to key with (print only)")
    p.add_argument("--baseline", default=None, metavar="PATH",
                   help="also key with this canonical.py (e.g. an older one) and show it as a second row")
    p.add_argument("--baseline-label", default="baseline", help="row label of --baseline")
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    command = "python bench/bench_filters.py" + (f" --n {args.n}" if args.n != 3000 else "")
    if args.baseline:
        command += f" --baseline {args.baseline} --baseline-label '{args.baseline_label}'"
    r = run(args)
    rows = [(args.module or "evomal.gp.canonical", r)]
    if args.baseline:
        rows.append((args.baseline_label, run(argparse.Namespace(**{**vars(args), "module": args.baseline}))))
    table = render(rows)
    print(table)
    if not (args.no_write or args.module):
        section = "\n".join([
            TITLE, "", f"`{command}`", "",
            f"{r['n']} fresh expressions from the project's own GP (per seed from {args.first_seed}: "
            "init_population of 25 and two bred generations). A merge is an expression that shares its key "
            "with an earlier one (an evaluation saved). Unsound key groups: distinct expressions with one "
            "key that differ in value or d/df at one-hot/softmax and regression points (zeros, ties, +-1, "
            "below the clamp 1e-7, small, large), confirmed in exact arithmetic; expressions off their key: "
            "expressions that differ from the formula their key denotes (checked for evomal.gp.canonical "
            "only). Both must be 0. Keys per second: distinct strings in one process, cold caches, on this "
            "shared 2-core machine (other jobs running), so a rough figure.", "",
            table, "",
        ])
        write_section(Path(args.output), section)
    return 0 if r["bad_groups"] == 0 and not r["key_bad"] else 1


if __name__ == "__main__":
    sys.exit(main())
