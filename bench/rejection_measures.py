"""The rejection protocol under both measures (DESIGN §1.5 item 2): of N candidate losses, how many does
the task metric (error rate / MSE, the default and the reference's rule) reject, and how many the task
loss (cross-entropy / MSE)? Part of `python bench/bench_pipeline.py filters`, which passes the distinct
expressions of its search; the settings are the search's own (its task, network, seed, lr, steps, samples).
"""
from __future__ import annotations

import time


def compare(expressions: list[str], exp: dict, device: str = "cpu") -> dict:
    """Run the rejection protocol exactly as the filter stage does, once per measure and expression."""
    from evomal.gp.expressions import parse
    from evomal.learning.context import use_threads
    from evomal.learning.filters import REJECTION_MEASURES, rejection_test
    from evomal.pipeline.stage_inputs import learning_setup

    use_threads(1)  # as the filter stage runs it: tiny tensors, extra threads only contend
    _, task, build, settings = learning_setup(exp, device)
    flt = exp["filters"]
    out = {"n": len(expressions), "results": {}, "seconds": {}}
    for measure in REJECTION_MEASURES:
        t0 = time.perf_counter()
        out["results"][measure] = {
            e: rejection_test(parse(e), task, build(exp["seed"]), samples=flt["rejection_samples"],
                              steps=flt["rejection_steps"], lr=settings.lr, seed=exp["seed"], measure=measure)
            for e in expressions}
        out["seconds"][measure] = time.perf_counter() - t0
    return out


def section_lines(cmp: dict, md_table) -> list[str]:
    n, by = cmp["n"], cmp["results"]
    rejected = {m: {e for e, r in res.items() if not r.accepted} for m, res in by.items()}
    metric, loss = rejected["metric"], rejected["task_loss"]
    rows = [[f"`{m}`" + (" (default)" if m == "metric" else ""), f"**{len(rejected[m])} of {n}** "
             f"({100 * len(rejected[m]) / max(n, 1):.0f}%)"] for m in by]
    cross = [["both", len(metric & loss)], ["only `metric`", len(metric - loss)],
             ["only `task_loss`", len(loss - metric)], ["neither", n - len(metric | loss)]]
    examples = []
    for label, only in (("only `metric` rejects", sorted(metric - loss)), ("only `task_loss` rejects",
                                                                           sorted(loss - metric))):
        for e in only[:3]:
            a, b = by["metric"][e], by["task_loss"][e]
            examples.append([label, f"`{e}`", f"{a.before:.3g} -> {a.after:.3g}", f"{b.before:.4g} -> {b.after:.4g}"])
    lines = ["### Rejection measure", "",
             f"The {n} distinct expressions of that search, each put through the rejection protocol under both "
             "`filters.rejection_measure` values with the search's settings (same task, network, seed, lr, "
             f"steps and samples as its filter stage), in-process on the CPU, one thread ({sum(cmp['seconds'].values()):.0f} s "
             "for both on the loaded machine; the protocol's cost does not depend on the measure):", "",
             md_table(["measure", "rejected"], rows), "",
             md_table(["rejected by", "expressions"], cross), ""]
    if examples:
        lines += ["Disagreements (up to three each; error rate under `metric`, cross-entropy under `task_loss`, "
                  "before -> after the protocol's Adam steps):", "",
                  md_table(["", "expression", "error rate", "cross-entropy"], examples), ""]
    lines += ["Reading: `task_loss` accepts losses that lower the cross-entropy of the untrained predictions "
              "while their error rate rises (e.g. ones that pull every class towards 1/C; tests/test_filters.py "
              "has a constructed case); `metric` rejects them, as the reference does. The measure changes which "
              "losses reach the local search, not what one protocol run costs. The expressions were bred by a "
              "search filtered with `metric`, so losses that only `task_loss` accepts are under-represented.", ""]
    return lines
