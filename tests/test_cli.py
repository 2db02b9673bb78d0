"""Tests of the ``evomal`` command (evomal.cli)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from evomal import cli
from evomal.core import files
from test_report import make_results  # noqa: E402 - the synthetic results folder of the report tests

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "results"
    make_results(root, "toy")
    make_results(root, "reg", kind="regression", generations=2)
    (root / "mlflow.db").write_bytes(b"")  # things beside the experiments are not listed
    (root / "notes").mkdir()
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show_experiment_prints_formula_tables_and_savings(results, capsys):
    code, out, err = run(capsys, "show", str(results / "toy"))
    assert code == 0 and err == ""
    best = files.read_json(results / "toy" / "best" / "loss.json")
    assert best["formula"] in out and best["expression"] in out
    assert "Meta-test (test error rate" in out and "Transfer (test error rate" in out
    lines = out.splitlines()
    meta = next(ln for ln in lines if ln.strip().startswith("digits/mlp") and " evomal " in ln)
    summary = files.read_tsv(results / "toy" / "meta_test_summary.tsv").set_index("method")
    assert f"{summary.loc['evomal', 'mean']:.4g} ± {summary.loc['evomal', 'std']:.4g}" in meta
    assert f"{summary.loc['evomal', 'p_value']:.3g}" in meta
    assert "Filter savings (" in out
    for label in ("evaluated", "equivalent", "rejected", "gradient-equivalent", "invalid"):
        assert any(ln.strip().startswith(label + " ") for ln in lines), label


def test_show_starts_with_the_verdict_in_words(results, capsys):
    _, out, _ = run(capsys, "show", str(results / "toy"))
    row = files.read_tsv(results / "toy" / "meta_test_summary.tsv").set_index("method").loc["evomal"]
    if row["p_value"] >= 0.05:
        word = "not significantly different from"
    else:
        word = "better than" if row["mean"] < row["baseline_mean"] else "worse than"
    assert out.splitlines()[0].startswith(f"The learned loss (evomal) is {word} cross-entropy on test, "
                                          f"p = {row['p_value']:.2g} (error rate {row['mean']:.4g} vs ")
    # how it was trained, so that the user trains with the same optimiser
    assert "trained:    torch.optim.SGD(lr=" in out


def test_show_lists_experiments_with_status(results, capsys):
    code, out, _ = run(capsys, "show", "--results-dir", str(results))
    assert code == 0
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[4:] if ln.strip()}
    assert set(rows) == {"reg", "toy"}
    assert rows["toy"][:5] == ["toy", "evomal", "3", "/", "3"] and rows["reg"][2:5] == ["2", "/", "2"]
    assert "0.061" in rows["toy"] and "done" in rows["toy"]
    # a results folder given as PATH lists too, and a bare name is looked up in --results-dir
    assert run(capsys, "show", str(results))[1] == out
    assert "Experiment reg" in run(capsys, "show", "reg", "--results-dir", str(results))[1]


def test_show_experiment_in_progress_and_baseline(results, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(results / "toy", partial)
    shutil.rmtree(partial / "best")
    for name in ("meta_test.tsv", "meta_test_summary.tsv", "transfer_summary.tsv"):
        (partial / name).unlink()
    code, out, _ = run(capsys, "show", str(partial))
    assert code == 0 and "Best loss: not selected yet" in out and "Meta-test: not run yet" in out
    assert "generations 3 / 3" in out
    code, out, _ = run(capsys, "show", "--results-dir", str(tmp_path))
    row = next(ln for ln in out.splitlines() if ln.startswith("partial"))
    assert row.split()[-3:] == ["-", "-", "-"] and row.split()[2:5] == ["3", "/", "3"]
    baseline = tmp_path / "base"
    baseline.mkdir()
    (baseline / "config.yaml").write_text("method: baseline\ndataset: digits\nmodel: mlp\n")
    shutil.copy(results / "toy" / "meta_test.tsv", baseline)
    shutil.copy(results / "toy" / "meta_test_summary.tsv", baseline)
    code, out, _ = run(capsys, "show", str(baseline))
    assert code == 0 and "method baseline" in out and "Best loss" not in out and "Meta-test (" in out


def test_errors_are_one_line_without_traceback(results, tmp_path, capsys):
    code, out, err = run(capsys, "show", str(tmp_path / "missing"))
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("evomal: error: no such")
    code, _, err = run(capsys, "show", "--results-dir", str(tmp_path / "nothing"))
    assert code == 1 and "no results folder" in err
    damaged = tmp_path / "damaged"
    shutil.copytree(results / "toy", damaged)
    (damaged / "best" / "loss.json").write_text("{not json")
    code, _, err = run(capsys, "show", str(damaged))
    assert code == 1 and "corrupted results file" in err and "Traceback" not in err and err.count("\n") == 1
    code, out, _ = run(capsys, "show", "--results-dir", str(tmp_path))  # listing survives a damaged folder
    assert code == 0 and "damaged" in out and "corrupted results file" in out
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_console_script_entry_point(results):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["evomal"] == "evomal.cli:main"
    proc = subprocess.run([sys.executable, "-m", "evomal.cli", "show", str(results / "toy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Best loss" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "evomal.cli", "show", str(results / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("evomal: error:")
