"""Tests of the report layer: tables, plots, summary.md and the standalone export of the best loss."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from evomal.core import files
from evomal.results import report
from evomal.losses.lossfile import load_loss, save_loss
from evomal.losses.modules import CompiledLoss
from evomal.pipeline.config import resolve_config
from evomal.losses.export import export_torch_source, write_torch_source
from evomal.gp.expressions import parse
from evomal.learning.finalists import ValidationScore
from evomal.pipeline.contract import DECISIONS, PER_SEED_COLUMNS, TABLE_COLUMNS
from evomal.pipeline.population import write_experiment_config
from evomal.pipeline.selection import finalists_table
from evomal.learning.statistics import summarize

# Together these use all 12 primitives and all terminals.
EXPRESSIONS = [
    "add(mul(y, log(f)), aq(square(-1), max(f, y)))",
    "sub(tanh(sqrt(f)), min(abs(y), sign(sub(f, 1))))",
    "mul(square(sub(f, y)), add(tanh(aq(y, f)), 1))",
]
POOL = EXPRESSIONS + ["mul(y, log(f))", "sub(f, y)", "aq(y, max(f, -1))", "square(sub(y, f))"]
SEEDS = [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- a synthetic results folder
def _generation_table(g: int, rng: np.random.Generator, size: int = 8) -> pd.DataFrame:
    rows = []
    for i in range(size):
        decision = DECISIONS[(i + g) % len(DECISIONS)] if i % 2 else "evaluate"
        fit = {"evaluate": float(rng.uniform(0.05, 0.4)), "equivalent": float(rng.uniform(0.05, 0.4)),
               "gradient_equivalent": float(rng.uniform(0.05, 0.4))}.get(decision, math.inf)
        rows.append({"id": f"g{g}-{i}", "expression": POOL[(i + g) % len(POOL)],
                     "origin": "init" if g == 0 else "crossover", "parents": "" if g == 0 else f"g{g - 1}-{i}",
                     "key": f"k{i}", "decision": decision, "reason": "" if decision == "evaluate" else "synthetic",
                     "reuse_of": "", "fitness": fit, "local_search_seconds": 0.5, "fitness_seconds": 1.0})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _per_seed(target: str, metric: str, rng: np.random.Generator, methods=("baseline", "evomal")) -> pd.DataFrame:
    rows = [{"target": target, "method": m, "seed": s, "test_metric": float(rng.uniform(0.02, 0.2)),
             "metric": metric, "diverged": False, "reason": "", "seconds": 3.0} for s in SEEDS for m in methods]
    return pd.DataFrame(rows, columns=PER_SEED_COLUMNS)


def _curves(frame: pd.DataFrame, rng: np.random.Generator, prefix: str = "") -> dict:
    steps = range(250, 2001, 250)
    return {f"{prefix}{r.method}/{r.seed}": [[s, float(2.0 / (1 + s / 500) + rng.normal(0, 0.05)),
                                             float(0.5 / (1 + s / 400) + rng.normal(0, 0.01))] for s in steps]
            for r in frame.itertuples()}


def experiment_spec(kind: str = "classification", *, generations: int = 3, transfer: bool = True,
                    method: str = "evomal") -> dict:
    dataset = "digits" if kind == "classification" else "diabetes"
    return {"method": method, "dataset": dataset, "model": "mlp",
            "search": {"population": 8, "generations": generations},
            "transfer": [{"dataset": "wine", "model": "mlp"}] if transfer and kind == "classification" else []}


def make_results(root: Path, name: str = "toy", *, kind: str = "classification", generations: int = 3,
                 transfer: bool = True, seed: int = 0, method: str = "evomal") -> Path:
    """A realistic experiment folder written with the project's own writers (config, tables, loss file).

    A ``baseline`` experiment gets no search files; its meta-test compares the baseline with "evomal".
    """
    rng = np.random.default_rng(seed)
    d = Path(root) / name
    exp = experiment_spec(kind, generations=generations, transfer=transfer, method=method)
    dataset = exp["dataset"]
    config = resolve_config({"run": [name], "experiments": {name: exp}})
    write_experiment_config(d / "config.yaml", experiment=name, config=config)
    if method != "baseline":
        for g in range(generations):
            files.write_tsv(d / f"gen_{g}" / "fitness.tsv", _generation_table(g, rng))
        tree = parse(EXPRESSIONS[0] if kind == "classification" else EXPRESSIONS[2])
        weights = 1.0 + 0.1 * rng.standard_normal(tree.num_edges)
        save_loss(d / "best" / "loss.json", tree, kind, weights, id="g1-0", generation=1, fitness=0.061,
                  method=method)
        # finalists: the baseline and two losses re-scored on validation (written by the stage's own table)
        entries = [{"id": "g1-0", "generation": 1, "expression": str(tree), "fitness": 0.061},
                   {"id": "g0-3", "generation": 0, "expression": EXPRESSIONS[1], "fitness": 0.07}]
        scores = [ValidationScore(n, s, float(v), None) for n, vals in
                  (("baseline", (0.08, 0.09)), ("g1-0", (0.06, 0.07)), ("g0-3", (0.1, 0.09))) for s, v in zip((100, 101), vals)]
        files.write_tsv(d / "finalists.tsv", finalists_table(entries, scores, [100, 101]))
    metric = "error_rate" if kind == "classification" else "mse"
    per_seed = _per_seed(f"{dataset}/mlp", metric, rng)
    files.write_tsv(d / "meta_test.tsv", per_seed)
    files.write_tsv(d / "meta_test_summary.tsv", summarize(per_seed))
    files.write_json(d / "meta_test_curves.json", {"curves": _curves(per_seed, rng), "seconds": 1.0})
    if exp["transfer"]:
        per_seed = _per_seed("wine/mlp", metric, rng)
        files.write_tsv(d / "transfer.tsv", per_seed)
        files.write_tsv(d / "transfer_summary.tsv", summarize(per_seed))
        files.write_json(d / "transfer_curves.json", {"curves": _curves(per_seed, rng, "wine/mlp/"), "seconds": 1.0})
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = make_results(tmp_path_factory.mktemp("results"))
    return d, report.build_report(d)


# --------------------------------------------------------------------------- tables
def test_decisions_are_the_stages_decisions():
    assert report.DECISIONS == DECISIONS


def test_fitness_by_generation_excludes_inf():
    table = report.read_generations([])
    assert table.empty
    frame = pd.DataFrame({"generation": [0, 0, 0, 1, 1, 2], "decision": ["evaluate"] * 6,
                          "fitness": [0.3, math.inf, 0.1, math.inf, math.inf, 0.2]})
    s = report.fitness_by_generation(frame)
    assert s["best"].tolist()[0] == 0.1 and s["median"].tolist()[0] == pytest.approx(0.2)
    assert math.isnan(s["best"][1]) and s["finite"].tolist() == [2, 0, 1]
    assert s["best_so_far"].tolist() == [0.1, 0.1, 0.1]


def test_decision_counts_and_savings():
    rng = np.random.default_rng(0)
    tables = [_generation_table(g, rng).assign(generation=g) for g in range(3)]
    table = pd.concat(tables, ignore_index=True)
    counts = report.decision_counts(table)
    assert list(counts.columns) == list(DECISIONS) and counts.to_numpy().sum() == len(table)
    savings = report.filter_savings(table)
    assert savings["share"].sum() == pytest.approx(1.0)
    assert savings.set_index("decision").loc["evaluate", "candidates"] == (table["decision"] == "evaluate").sum()
    shown = report.savings_table(table)
    assert shown["generation"].tolist() == ["0", "1", "2", "total"]
    with pytest.raises(ValueError, match="unknown filter decisions"):
        report.decision_counts(table.assign(decision="maybe"))


def _table_rows(md: str, heading: str) -> list[list[str]]:
    section = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[1:]]


@pytest.mark.parametrize("heading,per_seed_file", [("Meta-test", "meta_test.tsv"), ("Transfer", "transfer.tsv")])
def test_summary_statistics_recomputed_from_seeds(built, heading, per_seed_file):
    d, _ = built
    per_seed = files.read_tsv(d / per_seed_file)
    md = (d / "report" / "summary.md").read_text()
    rows = {r[1]: r for r in _table_rows(md, heading)}
    base = per_seed[per_seed["method"] == "baseline"].set_index("seed")["test_metric"]
    ours = per_seed[per_seed["method"] == "evomal"].set_index("seed")["test_metric"]
    t, p = scipy_stats.ttest_rel(ours.loc[base.index], base)
    # the statistics module agrees with scipy ...
    summary = summarize(per_seed).set_index("method")
    assert summary.loc["evomal", "mean"] == pytest.approx(ours.mean())
    assert summary.loc["evomal", "std"] == pytest.approx(ours.std(ddof=1))
    assert summary.loc["evomal", "p_value"] == pytest.approx(p)
    assert summary.loc["evomal", "t_statistic"] == pytest.approx(t)
    # ... and so does the table of summary.md, to the digits it shows
    for method, values in (("evomal", ours), ("baseline", base)):
        mean, std = (float(x) for x in rows[method][3].split(" ± "))
        assert mean == pytest.approx(values.mean(), rel=1e-3)
        assert std == pytest.approx(values.std(ddof=1), rel=1e-3)
        assert rows[method][2] == str(len(values))
    assert float(rows["evomal"][4]) == pytest.approx((ours - base).mean(), rel=1e-3, abs=1e-6)
    assert float(rows["evomal"][5]) == pytest.approx(t, rel=1e-2)
    assert float(rows["evomal"][6]) == pytest.approx(p, rel=1e-2)
    assert rows["evomal"][7] == f"{int((ours < base).sum())} / {int((ours > base).sum())}"
    assert rows["baseline"][6] == "-"


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # std of a column holding inf
def test_method_table_counts_diverged_runs():
    rng = np.random.default_rng(1)
    per_seed = _per_seed("digits/mlp", "error_rate", rng)
    per_seed.loc[per_seed.index[1], ["test_metric", "diverged"]] = [math.inf, True]
    table = report.method_table(summarize(per_seed), per_seed).set_index("method")
    assert table.loc["evomal", "diverged"] == 1 and table.loc["baseline", "diverged"] == 0


def test_read_curves_and_bands(tmp_path):
    files.write_json(tmp_path / "c.json", {"curves": {"baseline/0": [[10, 1.0, 0.5], [20, 0.5, 0.4]],
                                                      "baseline/1": [[10, 3.0, 0.7]],
                                                      "wine/mlp/evomal/0": [[10, 2.0, "inf"]]}})
    curves = report.read_curves(tmp_path / "c.json")
    assert set(curves["target"]) == {"", "wine/mlp"} and set(curves["method"]) == {"baseline", "evomal"}
    bands = report.curve_bands(curves, "train_loss").set_index(["target", "method", "step"])
    assert bands.loc[("", "baseline", 10), "mean"] == 2.0 and bands.loc[("", "baseline", 10), "std"] == 1.0
    assert bands.loc[("", "baseline", 20), "n"] == 1
    assert report.curve_bands(curves, "val_metric").query("method == 'evomal'").empty  # inf is dropped
    files.write_json(tmp_path / "bad.json", {"curves": {"baseline/0": [[1, 2]]}})
    with pytest.raises(files.ResultFileError, match="not a curves file"):
        report.read_curves(tmp_path / "bad.json")


# --------------------------------------------------------------------------- plots and summary
def test_report_folder_is_complete(built):
    d, made = built
    checked = report.check_report_dir(d / "report", expected=report.PLOT_FILES)
    assert {p.name for p in checked} == set(report.PLOT_FILES.values())
    md = (d / "report" / "summary.md").read_text()
    best = files.read_json(d / "best" / "loss.json")
    assert best["formula"] in md and best["latex"] in md and best["expression"] in md
    assert "[../best/loss.py](../best/loss.py)" in md
    for label in ("evaluated", "equivalent", "rejected", "gradient-equivalent", "invalid", "total"):
        assert label in md
    html = (d / "report" / "summary.html").read_text()
    assert html.count("data:image/png;base64,") == len(report.PLOT_FILES) and "<table>" in html
    # the answer first, and every plot's vector version linked
    assert md.index("## Verdict") < md.index("## Best loss") and "- The learned loss (evomal) is " in md
    assert md.count("Vector version: [") == len(report.PLOT_FILES)


def test_html_escapes_what_it_shows():
    blocks = [report.Block("h1", "a <b> & c"), report.Block("table", pd.DataFrame({"x<y": ["max(f, y) < 1"]})),
              report.Block("list", [("see ", "<here>")])]
    html = report.render_html(blocks, "t<itle>")
    assert "<h1>a &lt;b&gt; &amp; c</h1>" in html and "<th>x&lt;y</th>" in html
    assert "<td>max(f, y) &lt; 1</td>" in html and "<li>see &lt;here&gt;</li>" in html and "t&lt;itle&gt;" in html


def test_regression_report_without_transfer(tmp_path):
    d = make_results(tmp_path, "reg", kind="regression", generations=2)
    made = report.build_report(d)
    assert "transfer_curves" not in made
    report.check_report_dir(d / "report", expected=["fitness", "decisions", "loss_shape", "meta_test_curves"])
    assert "## Transfer" not in (d / "report" / "summary.md").read_text()


def test_check_report_dir_rejects_bad_plots(built, tmp_path):
    d, _ = built
    bad = tmp_path / "report"
    bad.mkdir()
    for name in ("summary.md", "summary.html"):
        (bad / name).write_bytes((d / "report" / name).read_bytes())
    for name in report.PLOT_FILES.values():
        (bad / name).write_bytes((d / "report" / name).read_bytes())
    (bad / report.PLOT_FILES["fitness"]).write_bytes(b"not a png at all" * 1000)
    with pytest.raises(AssertionError, match="not a PNG"):
        report.check_report_dir(bad)
    (bad / report.PLOT_FILES["fitness"]).unlink()
    with pytest.raises(AssertionError, match="missing"):
        report.check_report_dir(bad)


def test_loss_shapes_use_the_compiled_loss(tmp_path):
    tree = parse(EXPRESSIONS[0])
    weights = torch.linspace(0.8, 1.2, tree.num_edges)
    save_loss(tmp_path / "loss.json", tree, "classification", weights)
    shapes = report.loss_shapes({"evomal": tmp_path / "loss.json"}, points=11)
    assert list(shapes.curves["true class (y = 1)"]) == ["evomal", "cross-entropy"]
    p = torch.tensor(shapes.x, dtype=torch.float64)
    loss = load_loss(tmp_path / "loss.json")
    expected = loss.compiled(loss.weights.double(), torch.zeros_like(p), p).numpy()
    np.testing.assert_allclose(shapes.curves["wrong class (y = 0)"]["evomal"], expected, rtol=1e-12)
    np.testing.assert_allclose(shapes.curves["true class (y = 1)"]["cross-entropy"], -np.log(shapes.x))
    # a batch of one sample with two classes is the sum of one true and one wrong term
    logits = torch.log(torch.tensor([[0.3, 0.7]], dtype=torch.float64))
    batch = CompiledLoss(tree, "classification", weights)(logits, torch.tensor([0])).item()
    one = report.classification_shapes({"l": report.learned_elementwise(loss)}, np.array([0.3, 0.7]))
    assert batch == pytest.approx(one.curves["true class (y = 1)"]["l"][0] + one.curves["wrong class (y = 0)"]["l"][1])


def test_plot_functions_write_pngs_without_pyplot(tmp_path):
    d = make_results(tmp_path, "p", generations=2, transfer=False)
    report.plot_search(report.generation_tables(d), tmp_path / "f.png", tmp_path / "d.png")
    report.plot_learning_curves(d / "meta_test_curves.json", tmp_path / "c.png", per_seed_tsv=d / "meta_test.tsv")
    files.write_json(tmp_path / "empty.json", {"curves": {}})
    report.plot_learning_curves(tmp_path / "empty.json", tmp_path / "e.png")
    for name in ("f.png", "d.png", "c.png"):
        report.check_png(tmp_path / name)
    assert (tmp_path / "e.png").read_bytes()[:8] == report.PNG_MAGIC


def test_report_module_never_imports_pyplot():
    # in a fresh interpreter: other tests (mnist1d) import pyplot into this one
    code = ("import sys, evomal.results.report, evomal.losses.export, evomal.cli; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plots_from_threads_equal_sequential_plots(tmp_path):
    """Report jobs run as threads of one Snakemake process: concurrent plots must not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    d = make_results(tmp_path, "t", generations=3)
    jobs = {"f{}.png": lambda out: report.plot_search(report.generation_tables(d), out, str(out) + ".d.png"),
            "s{}.png": lambda out: report.plot_loss_shape({"evomal": d / "best" / "loss.json"}, out),
            "c{}.png": lambda out: report.plot_learning_curves(d / "transfer_curves.json", out)}
    for name, job in jobs.items():
        job(tmp_path / name.format("seq"))
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(job, tmp_path / name.format(i)) for i in range(2) for name, job in jobs.items()]
        for f in futures:
            f.result()
    for name in jobs:
        expected = (tmp_path / name.format("seq")).read_bytes()
        for i in range(2):
            assert (tmp_path / name.format(i)).read_bytes() == expected, name.format(i)


# --------------------------------------------------------------------------- export
_DRIVER = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    cases = json.load(open(sys.argv[1]))
    results = {}
    for name, case in cases.items():
        spec = importlib.util.spec_from_file_location("exported_" + name, case["source"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        data = torch.load(case["inputs"])
        out = {}
        for dtype in ("float32", "float64"):
            output = data["output"].detach().to(getattr(torch, dtype)).clone().requires_grad_()
            value = module.loss(output, data["target"])
            value.backward()
            out[dtype] = (value.detach(), output.grad)
        mod = module.LearnedLoss(trainable=True)
        output = data["output"].clone().requires_grad_()
        value = mod(output, data["target"])
        value.backward()
        out["module"] = (value.detach(), output.grad, mod.weights.grad)
        results[name] = out
    torch.save(results, sys.argv[2])
    leaked = sorted(m for m in sys.modules if m == "evomal" or m.startswith("evomal."))
    assert not leaked, leaked
""")


def _inputs(kind: str, gen: torch.Generator) -> dict:
    if kind == "classification":
        return {"output": 2 * torch.randn(32, 5, generator=gen), "target": torch.randint(0, 5, (32,), generator=gen)}
    return {"output": torch.randn(32, 1, generator=gen), "target": torch.randn(32, 1, generator=gen)}


def test_exported_source_matches_compiled_loss(tmp_path):
    gen = torch.Generator().manual_seed(0)
    cases, reference = {}, {}
    for kind in ("classification", "regression"):
        for i, text in enumerate(EXPRESSIONS):
            tree = parse(text)
            weights = 1.0 + 0.3 * torch.randn(tree.num_edges, generator=gen)
            name = f"{kind}_{i}"
            save_loss(tmp_path / f"{name}.json", tree, kind, weights)
            write_torch_source(tmp_path / f"{name}.json", tmp_path / f"{name}.py")
            data = _inputs(kind, gen)
            torch.save(data, tmp_path / f"{name}.pt")
            cases[name] = {"source": str(tmp_path / f"{name}.py"), "inputs": str(tmp_path / f"{name}.pt")}
            reference[name] = (tree, kind, weights, data)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "driver.py").write_text(_DRIVER)
    # a fresh interpreter that never imports evomal (the driver asserts it)
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cases.json"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = torch.load(tmp_path / "out.pt")
    for name, (tree, kind, weights, data) in reference.items():
        for dtype, tol in (("float32", 1e-5), ("float64", 1e-12)):
            loss = load_loss(tmp_path / f"{name}.json")
            output = data["output"].detach().to(getattr(torch, dtype)).clone().requires_grad_()
            value = loss(output, data["target"])
            value.backward()
            got_value, got_grad = results[name][dtype]
            torch.testing.assert_close(got_value, value.detach(), rtol=tol, atol=tol, msg=f"{name} {dtype}")
            torch.testing.assert_close(got_grad, output.grad, rtol=tol, atol=tol, msg=f"{name} {dtype} grad")
        module = CompiledLoss(tree, kind, weights, trainable=True)
        output = data["output"].clone().requires_grad_()
        value = module(output, data["target"])
        value.backward()
        got_value, got_grad, got_wgrad = results[name]["module"]
        torch.testing.assert_close(got_value, value.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_grad, output.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_wgrad, module.weights.grad, rtol=1e-5, atol=1e-6, msg=f"{name} weights")


def test_export_is_deterministic_and_documented(tmp_path):
    tree = parse(EXPRESSIONS[1])
    save_loss(tmp_path / "loss.json", tree, "classification", torch.ones(tree.num_edges), fitness=0.1, id="g0-1")
    a = export_torch_source(tmp_path / "loss.json")
    assert a == export_torch_source(tmp_path / "loss.json")
    assert "def loss(output, target):" in a and "class LearnedLoss(torch.nn.Module):" in a
    assert re.search(r"^import torch$", a, re.M) and "evomal." not in a.replace("evomal (", "")
    assert EXPRESSIONS[1] in a and "# fitness: 0.1" in a


def test_export_rejects_damaged_loss_files(tmp_path):
    (tmp_path / "a.json").write_text('{"kind": "classification", "expression": "sub(f, y)", "weights": [1.0]}')
    with pytest.raises(files.ResultFileError, match="1 weights for an expression with 2 edges"):
        export_torch_source(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"kind": "ranking", "expression": "sub(f, y)", "weights": [1.0, 1.0]}')
    with pytest.raises(files.ResultFileError, match="kind must be one of"):
        export_torch_source(tmp_path / "b.json")
    with pytest.raises(files.ResultFileError, match="missing"):
        export_torch_source(tmp_path / "c.json")


# --------------------------------------------------------------------------- the Snakemake rules
#: Distinctive caption sentences (workflow/report/*.rst) that `snakemake --report` must carry.
CAPTIONS = [
    "EvoMAL: meta-learned symbolic loss functions",  # workflow.rst, the global description
    "Search fitness per generation of experiment toy",
    "Filter decisions per generation of experiment toy",
    "Shape of the learned loss of experiment toy",
    "Meta-test learning curves of experiment toy",
    "Transfer learning curves of experiment toy",
    "Standalone PyTorch source of the best loss of experiment toy",
    "Summary tables of experiment toy",
    "Shape of the learned loss of experiment base",
    "Summary tables of experiment base",
]


@pytest.mark.slow
def test_report_rules_and_snakemake_report(tmp_path):
    """The rules of report.smk on synthetic upstream files (sources here), then `snakemake --report`."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    make_results(tmp_path / "results", "toy")
    make_results(tmp_path / "results", "base", method="baseline", transfer=False, seed=1)
    base = experiment_spec(method="baseline", transfer=False) | {"compare": ["toy"]}
    config = {"run": ["toy", "base"], "results_dir": "results",
              "experiments": {"toy": experiment_spec(), "base": base}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    rules = root / "workflow" / "rules"
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        configfile: "config.yaml"
        include: "{rules / 'common.smk'}"
        include: "{rules / 'report.smk'}"
        rule all:
            input: expand(RESULTS + "/{{e}}/report/summary.md", e=CFG["run"])
    """))
    snakemake = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--force-use-threads"]
    proc = subprocess.run(snakemake, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report.check_report_dir(tmp_path / "results" / "toy" / "report", expected=report.PLOT_FILES)
    report.check_report_dir(tmp_path / "results" / "base" / "report", expected=["loss_shape", "meta_test_curves"])
    assert not (tmp_path / "results" / "base" / "report" / "fitness.png").exists()
    base_md = (tmp_path / "results" / "base" / "report" / "summary.md").read_text()
    toy_loss = files.read_json(tmp_path / "results" / "toy" / "best" / "loss.json")
    assert "## Compared learned losses" in base_md and toy_loss["formula"].replace("*", "\\*") in base_md
    assert "## Best loss" not in base_md and "## Filter savings" not in base_md
    toy_md = (tmp_path / "results" / "toy" / "report" / "summary.md").read_text()
    assert "## Finalists" in toy_md and "The selected loss g1-0 beats the baseline on validation" in toy_md
    assert (tmp_path / "results" / "toy" / "best" / "loss.py").exists()
    proc = subprocess.run(snakemake[:1] + ["--report", "report.html"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "report.html").read_text()
    for caption in CAPTIONS:
        assert caption in page, caption


# --------------------------------------------------------------------------- fit for a paper
def _curve_files(tmp_path, val_of):
    """curves.json and its per-seed table: baseline and evomal, 2 seeds, points at steps 0, 10, 20."""
    curves = {f"{m}/{s}": [[step, math.nan if step == 0 else 1.0 / step, val_of(m, s, step)] for step in (0, 10, 20)]
              for m in ("baseline", "evomal") for s in (0, 1)}
    files.write_json(tmp_path / "curves.json", {"curves": curves})
    per_seed = pd.DataFrame([{"target": "digits/mlp", "method": m, "seed": s, "test_metric": 0.1, "metric": "error_rate",
                              "diverged": False, "reason": ""} for m in ("baseline", "evomal") for s in (0, 1)])
    files.write_tsv(tmp_path / "per_seed.tsv", per_seed)
    return tmp_path / "curves.json", tmp_path / "per_seed.tsv"


def test_plots_are_fit_for_a_paper(tmp_path):
    from matplotlib.image import imread

    curves_json, per_seed = _curve_files(tmp_path, lambda m, s, step: 0.9 - 0.02 * step - 0.01 * s)
    report.plot_learning_curves(curves_json, tmp_path / "c.png", per_seed_tsv=per_seed)
    svg = report.vector_path(tmp_path / "c.png")
    report.check_svg(svg)
    text = svg.read_text()
    # metric names as words, the band explained, text kept as text (editable in a vector editor)
    assert "validation error rate" in text and "error_rate" not in text
    assert "shaded: mean ± 1 std over seeds" in text
    assert imread(tmp_path / "c.png").shape[1] == 10 * report.PNG_DPI  # 10 inches at 200 dpi
    first = svg.read_bytes()
    report.plot_learning_curves(curves_json, tmp_path / "c.png", per_seed_tsv=per_seed)
    assert svg.read_bytes() == first  # no date or random ids inside: the same figure gives the same file

    fig = report.draw_curves(report.read_curves(curves_json), metric="validation error rate")
    loss_ax, metric_ax = fig.axes[:2]
    assert min(line.get_xdata().min() for line in metric_ax.get_lines()) == 0  # step 0: the untrained network
    assert metric_ax.get_xlim()[0] == 0 and metric_ax.get_ylim()[0] == 0
    styles = {line.get_label().split()[0]: (line.get_color(), line.get_linestyle()) for line in metric_ax.get_lines()}
    assert styles == {"baseline": ("black", "--"), "evomal": (report.OKABE_ITO[0], "-")}


@pytest.mark.parametrize("value, limits", [(0.0, (0.0, 1.0)), (0.3, (0.0, 0.375))])
def test_a_constant_curve_gets_a_sensible_axis(tmp_path, value, limits):
    curves_json, _ = _curve_files(tmp_path, lambda m, s, step: value)
    fig = report.draw_curves(report.read_curves(curves_json), metric="validation error rate")
    assert fig.axes[1].get_ylim() == pytest.approx(limits)  # not -0.04 .. 0.04 around an error rate of 0


def test_decision_colours_are_colour_blind_safe_and_distinct():
    colours = [report.DECISION_COLORS[d] for d in report.DECISIONS]
    assert len(set(colours)) == len(colours)
    assert set(colours) <= set(report.OKABE_ITO) | {"#999999"}
