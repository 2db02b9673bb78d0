"""The pipeline through the real `snakemake`: the file contract, reruns, resumption, extension, dry runs."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pandas as pd
import pytest

from workflow_utils import (REPO, SNAKEMAKE, SNAKEFILE, candidate_fitness, contract_files, snakemake,
                            tiny_config, write_config)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One complete tiny run; tests that modify results work on a copy."""
    workdir = tmp_path_factory.mktemp("tiny")
    write_config(workdir, tiny_config())
    proc = snakemake(workdir)
    return workdir, proc


def copy_run(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_every_file_of_the_contract(tiny_run):
    workdir, proc = tiny_run
    exp = workdir / "results" / "tiny"
    assert (exp / "config.yaml").exists()
    for g in range(2):
        gen = exp / f"gen_{g}"
        population = json.loads((gen / "population.json").read_text())
        assert len(population["individuals"]) == 8
        flt = json.loads((gen / "filter.json").read_text())
        table = pd.read_csv(gen / "fitness.tsv", sep="\t", keep_default_na=False)
        assert list(table["id"]) == [i["id"] for i in population["individuals"]]
        assert set(table["decision"]) <= {"evaluate", "equivalent", "rejected", "gradient_equivalent", "invalid"}
        for rec in flt["candidates"]:
            row = table.set_index("id").loc[rec["id"]]
            assert row["decision"] == rec["decision"] and rec["reason"]
            if rec["decision"] == "evaluate":
                cdir = gen / "candidates" / rec["id"]
                for name in ("loss.json", "optimized.pt", "fitness.json"):
                    assert (cdir / name).stat().st_size > 0, cdir / name
                fit = json.loads((cdir / "fitness.json").read_text())["fitness"]
                assert float(row["fitness"]) == pytest.approx(float(fit), nan_ok=True)
            elif rec["decision"] == "rejected":
                assert math.isinf(float(row["fitness"]))
    # the best loss is an evaluated loss of the search with a finite fitness (the finalists choose which)
    fitness = pd.concat([pd.read_csv(exp / f"gen_{g}/fitness.tsv", sep="\t") for g in range(2)])
    best = json.loads((exp / "best/loss.json").read_text())
    assert math.isfinite(float(best["fitness"]))
    assert float(best["fitness"]) in set(fitness["fitness"])
    # finalists: the baseline and the best distinct losses re-scored on validation; the chosen one is best/
    finalists = pd.read_csv(exp / "finalists.tsv", sep="\t", keep_default_na=False)
    assert finalists["id"].iloc[0] == "baseline" and finalists["selected"].sum() == 1
    assert [c for c in finalists.columns if c.startswith("seed_")] == ["seed_100", "seed_101", "seed_102"]
    assert best["id"] == finalists.loc[finalists["selected"], "id"].item()
    meta = pd.read_csv(exp / "meta_test.tsv", sep="\t")
    assert set(meta["method"]) == {"baseline", "label_smoothing", "evomal"} and set(meta["seed"]) == {0, 1}
    transfer = pd.read_csv(exp / "transfer.tsv", sep="\t")
    assert set(transfer["target"]) == {"wine/linear"}
    assert (workdir / "results" / "mlflow.db").exists()
    # what a person reads: one progress line per generation, a line per meta-test and transfer run as it
    # ends, the verdict and how to see more; none of Snakemake's per-job blocks (the default profile)
    assert re.findall(r"^gen (\d)/2  best \S+ .*  evaluated \d/8  elapsed \S+  ETA \S+$", proc.stderr, re.M) == ["1", "2"]
    runs = len(set(meta["method"])) * 2  # counted per arm (a job each): k/2 seeds
    assert len(re.findall(r"^meta-test: digits/mlp [12]/2  \S+ seed \d  test error rate ", proc.stderr, re.M)) == runs
    assert len(re.findall(r"^transfer: wine/linear \d+/\d+  ", proc.stderr, re.M)) == len(transfer)
    assert re.search(r"^tiny: The learned loss \(evomal\) is (better than|not significantly different from|worse "
                     r"than) cross-entropy on test, p = ", proc.stderr, re.M)
    assert "evomal show results/tiny" in proc.stderr
    for chatter in ("rule population", "Select jobs to execute", "Execute 1 jobs", "Finished jobid", "% done"):
        assert chatter not in proc.stderr, chatter
    assert len(proc.stderr.splitlines()) < 150  # about 80 here; about 600 with all of Snakemake's output (--quiet host)


def test_rerunning_stages_gives_identical_files(tiny_run, tmp_path):
    workdir = copy_run(tiny_run[0], tmp_path / "w")
    exp = workdir / "results" / "tiny"
    before = contract_files(exp)
    # force a stage to run again, recomputing its candidates
    snakemake(workdir, "-R", "optimize", "--config", "recompute=True")
    assert contract_files(exp) == before
    # stop after a stage; then one generation's file as the target; then the rest
    shutil.rmtree(exp / "gen_1")
    snakemake(workdir, "--until", "filter")
    assert (exp / "gen_1" / "filter.json").exists() and not (exp / "gen_1" / "fitness.tsv").exists()
    snakemake(workdir, "results/tiny/gen_1/fitness.tsv")
    assert (exp / "gen_1" / "fitness.tsv").exists()
    snakemake(workdir)
    assert contract_files(exp) == before
    # delete a generation folder: exactly that generation and what depends on it is recomputed
    shutil.rmtree(exp / "gen_1")
    proc = snakemake(workdir, "--quiet", "host")  # Snakemake's job blocks, which the default profile hides
    assert "rule population" in proc.stderr and "wildcards: experiment=tiny, gen=0" not in proc.stderr
    assert contract_files(exp) == before


def test_nothing_to_do_after_a_finished_run(tiny_run, tmp_path):
    workdir = copy_run(tiny_run[0], tmp_path / "w")
    proc = snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_raising_generations_extends_a_finished_run(tiny_run, tmp_path):
    workdir = copy_run(tiny_run[0], tmp_path / "w")
    exp = workdir / "results" / "tiny"
    old = {p: p.stat().st_mtime_ns for p in exp.glob("gen_[01]/**/*") if p.is_file()}
    write_config(workdir, tiny_config(search={"generations": 3}))
    proc = snakemake(workdir, "--quiet", "host")
    assert (exp / "gen_2" / "fitness.tsv").exists()
    assert {p: p.stat().st_mtime_ns for p in old} == old, "earlier generations must not be recomputed"
    assert "rule best" in proc.stderr and "rule meta_test" in proc.stderr


def test_dry_run_of_a_reference_sized_search_builds(tmp_path):
    config = tiny_config(search={"population": 25, "generations": 50})
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", timeout=300)
    assert "population" in proc.stdout


def test_a_200_generation_search_builds_its_dag(tmp_path):
    write_config(tmp_path, tiny_config(search={"population": 4, "generations": 200}))
    proc = snakemake(tmp_path, "-n", timeout=600)
    assert "RecursionError" not in proc.stderr


@pytest.mark.parametrize("change, key", [
    ({"search": {"population": -3}}, "experiments.tiny.search.population"),
    ({"search": {"crossover": 0.9, "mutation": 0.25}}, "experiments.tiny.search"),
    ({"dataset": "no_such_data"}, "experiments.tiny.dataset"),
    ({"model": "no_such_net"}, "experiments.tiny.model"),
    ({"method": "sgd"}, "experiments.tiny.method"),
    ({"meta_test": {"seeds": []}}, "experiments.tiny.meta_test.seeds"),
])
def test_invalid_config_fails_before_any_job(tmp_path, change, key):
    write_config(tmp_path, tiny_config(**change))
    proc = snakemake(tmp_path, check=False, timeout=120)
    assert proc.returncode != 0
    assert key in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(SNAKEFILE), "--lint"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_fitness_matches_uninterrupted_run_after_resume(tiny_run, tmp_path):
    """A kill in the middle of a generation's evaluation, then `snakemake`: same files, nothing redone."""
    workdir = tmp_path / "w"
    write_config(workdir, tiny_config())
    proc = snakemake(workdir, env={"EVOMAL_FAILPOINT": "evaluate"}, check=False)
    assert proc.returncode != 0
    exp = workdir / "results" / "tiny"
    # a file being written when the kill came stays a hidden temporary name (removed by the next run)
    finished = {p: p.stat().st_mtime_ns for p in exp.glob("gen_*/candidates/*/*")
                if p.is_file() and not p.name.startswith(".")}
    assert finished, "the kill came before any candidate finished"
    snakemake(workdir)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert contract_files(exp) == contract_files(tiny_run[0] / "results" / "tiny")
    assert candidate_fitness(exp) == candidate_fitness(tiny_run[0] / "results" / "tiny")
