"""ML3, TaylorGLO and the five-method comparison through the real `snakemake`, at tiny sizes."""
from __future__ import annotations

import copy
import json
import math
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest

from evomal.core.files import dumps_json
from evomal.methods.cmaes import tell
from evomal.methods.taylorglo import cmaes_settings
from workflow_utils import snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

#: tiny everywhere: no finalists (one validation training each would double the cost), no transfer
SMALL = {"selection": {"finalists": 0}, "transfer": [], "meta_test": {"references": []}}


def _config(method: str, **overrides) -> dict:
    return tiny_config(method=method, **copy.deepcopy(SMALL), **overrides)


def _loads_in_a_fresh_interpreter(path) -> dict:
    """``evomal.load_loss`` in a new process: the file alone is enough (no pickle, no state)."""
    code = ("import json, sys, torch, evomal\n"
            f"loss = evomal.load_loss({str(path)!r})\n"
            "out = loss(torch.randn(4, 10), torch.tensor([0, 1, 2, 3]))\n"
            "print(json.dumps({'type': type(loss).__name__, 'family': loss.family, 'value': out.item(),"
            " 'n': loss.weights.numel()}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _exp_of(workdir) -> dict:
    """The experiment as it ran (its resolved config.yaml)."""
    import yaml

    return yaml.safe_load((workdir / "results" / "tiny" / "config.yaml").read_text())


def _meta_test(exp_dir) -> pd.DataFrame:
    return pd.read_csv(exp_dir / "meta_test.tsv", sep="\t")


def test_ml3_runs_to_a_meta_test_table_and_a_loadable_loss(tmp_path):
    write_config(tmp_path, _config("ml3", local_search={"meta_steps": 8}))
    snakemake(tmp_path)
    exp = tmp_path / "results" / "tiny"
    assert not list(exp.glob("gen_*"))  # one learned loss, no generations
    meta = _meta_test(exp)
    assert set(meta["method"]) == {"baseline", "ml3"} and set(meta["seed"]) == {0, 1}
    best = json.loads((exp / "best" / "loss.json").read_text())
    assert best["family"] == "ml3" and best["method"] == "ml3" and math.isfinite(float(best["fitness"]))
    assert best["meta_training"]["steps"] == 8 and len(best["meta_training"]["curve"]) == 8
    loaded = _loads_in_a_fresh_interpreter(exp / "best" / "loss.json")
    assert loaded == {**loaded, "type": "NeuralLoss", "family": "ml3", "n": 2650} and math.isfinite(loaded["value"])
    assert "import torch" in (exp / "best" / "loss.py").read_text()
    assert (exp / "report" / "summary.md").exists() and (exp / "tracking" / "results.json").exists()
    summary = pd.read_csv(exp / "meta_test_summary.tsv", sep="\t").set_index("method")
    assert math.isfinite(summary.loc["ml3", "p_value"])  # paired against the baseline


def test_taylorglo_runs_cmaes_generations_in_the_file_contract(tmp_path):
    """Killed while gathering generation 0 (its CMA-ES state not yet written), then resumed to the end."""
    write_config(tmp_path, _config("taylorglo", search={"population": 5, "generations": 2}))
    exp = tmp_path / "results" / "tiny"
    killed = snakemake(tmp_path, env={"EVOMAL_FAILPOINT": "gather"}, check=False)
    assert killed.returncode == -signal.SIGKILL and "failpoint gather" in killed.stderr
    assert (exp / "gen_0" / "population.json").exists() and not (exp / "gen_0" / "cmaes.json").exists()
    proc = snakemake(tmp_path, env={"EVOMAL_FAILPOINT": ""})
    for g in range(2):
        gen = exp / f"gen_{g}"
        population = json.loads((gen / "population.json").read_text())["individuals"]
        table = pd.read_csv(gen / "fitness.tsv", sep="\t", keep_default_na=False)
        assert len(population) == 5 and list(table["id"]) == [i["id"] for i in population]
        assert set(table["decision"]) == {"evaluate"} and set(table["origin"]) == {"cma-es"}
        state = json.loads((gen / "cmaes.json").read_text())
        assert len(state["generations"]) == g + 1 and state["settings"]["sigma"] == 1.2
        assert state["generations"][-1]["fitness"] == [float(v) for v in table["fitness"]]
        for ind in population:
            cand = json.loads((gen / "candidates" / ind["id"] / "loss.json").read_text())
            assert cand["family"] == "taylor" and cand["weights"] == ind["theta"]
        assert json.loads((gen / "tracked.json").read_text())["candidates"] == 5  # every sample in MLflow
    assert len(re.findall(r"^gen \d/2  best ", proc.stderr, re.M)) == 2  # the GP search's progress lines
    # the resumed state is CMA-ES told exactly the recorded samples and fitness, generation by generation
    settings, state = cmaes_settings(_exp_of(tmp_path)), None
    for g in range(2):
        thetas = [i["theta"] for i in json.loads((exp / f"gen_{g}" / "population.json").read_text())["individuals"]]
        fit = pd.read_csv(exp / f"gen_{g}" / "fitness.tsv", sep="\t")["fitness"].tolist()
        state = tell(state, settings, thetas, fit)
    assert json.loads(dumps_json(state.to_dict())) == json.loads((exp / "gen_1" / "cmaes.json").read_text())
    meta = _meta_test(exp)
    assert set(meta["method"]) == {"baseline", "taylorglo"}
    best = json.loads((exp / "best" / "loss.json").read_text())
    fitness = pd.concat([pd.read_csv(exp / f"gen_{g}/fitness.tsv", sep="\t") for g in range(2)])
    assert best["family"] == "taylor" and float(best["fitness"]) == fitness["fitness"].min()
    loaded = _loads_in_a_fresh_interpreter(exp / "best" / "loss.json")
    assert loaded["type"] == "TaylorLoss" and loaded["n"] == 8
    show = subprocess.run([sys.executable, "-m", "evomal.cli", "show", "results/tiny"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert show.returncode == 0 and "generations 2 / 2" in show.stdout and "taylorglo" in show.stdout
    # nothing left to do, and the GP rules never ran for this experiment
    dry = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    assert not (exp / "logs" / "gen_0" / "filter.log").exists()


def test_compare_meta_tests_all_five_methods_in_one_table(tmp_path):
    """baseline, GP-LFL, EvoMAL, ML3 and TaylorGLO on one task and the same seeds: one table, paired
    tests against the baseline (the shape of the paper's tables)."""
    config = _config("baseline", search={"population": 4, "generations": 1}, local_search={"meta_steps": 3},
                     training={"steps": 30})
    base = config["experiments"]["tiny"]
    others = {f"tiny-{m}": {**copy.deepcopy(base), "method": m} for m in ("gplfl", "evomal", "ml3", "taylorglo")}
    config["experiments"].update(others)
    base["compare"] = list(others)
    write_config(tmp_path, config)
    snakemake(tmp_path)
    exp = tmp_path / "results" / "tiny"
    meta = _meta_test(exp)
    assert list(dict.fromkeys(meta["method"])) == ["baseline", "gplfl", "evomal", "ml3", "taylorglo"]
    assert {m: sorted(g["seed"]) for m, g in meta.groupby("method")} == {m: [0, 1] for m in meta["method"]}
    summary = pd.read_csv(exp / "meta_test_summary.tsv", sep="\t").set_index("method")
    learned = ["gplfl", "evomal", "ml3", "taylorglo"]
    assert summary.loc[learned, "baseline_mean"].eq(summary.loc["baseline", "mean"]).all()
    assert summary.loc[learned, "wins"].add(summary.loc[learned, "losses"]).le(2).all()
    families = {m: json.loads((tmp_path / "results" / f"tiny-{m}" / "best" / "loss.json").read_text()).get("family")
                for m in learned}
    assert families == {"gplfl": None, "evomal": None, "ml3": "ml3", "taylorglo": "taylor"}
    assert "taylorglo" in (exp / "report" / "summary.md").read_text()
