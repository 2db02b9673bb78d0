"""A results folder written by the release before the package restructure (tests/data/legacy_run.tar.gz:
an evomal search of 1 generation on digits, its meta-test, transfer and MLflow store) is read, shown and
extended by one generation by this code, with every finished file of the old generation unchanged."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from workflow_utils import REPO, snakemake

ARCHIVE = REPO / "tests" / "data" / "legacy_run.tar.gz"
EVOMAL = Path(sys.executable).parent / "evomal"


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def legacy(tmp_path):
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path


def _show(workdir: Path) -> str:
    proc = subprocess.run([str(EVOMAL), "show", "results/legacy"], cwd=workdir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_legacy_results_folder_is_shown(legacy):
    text = _show(legacy)
    assert "generations 1 / 1" in text
    assert "sqrt(square(aq(sub(y, f), y)))" in text  # the legacy run's best loss
    assert "Meta-test" in text and "Transfer" in text


@pytest.mark.slow
def test_a_legacy_results_folder_is_extended_by_one_generation(legacy):
    exp = legacy / "results" / "legacy"
    before = _digests(exp / "gen_0")
    config = yaml.safe_load((legacy / "config.yaml").read_text())
    config["experiments"]["legacy"]["search"]["generations"] = 2
    (legacy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    snakemake(legacy)

    assert _digests(exp / "gen_0") == before  # the finished generation is reused byte for byte
    assert (exp / "gen_1" / "fitness.tsv").exists() and (exp / "gen_1" / "tracked.json").exists()
    # done generations; the configured count comes from results/legacy/config.yaml, which Snakemake
    # rewrites only when it has the params metadata of .snakemake/ (the archive carries none)
    assert "generations 2 / " in _show(legacy)
    # the old MLflow store got the new generation and no duplicate (a search is keyed by its absolute
    # folder, and the archive is unpacked elsewhere than it was written, so gen_1 may sit under a new
    # search run; what must hold is one run per generation)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{legacy / 'results' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("legacy").experiment_id
    generations = client.search_runs([exp_id], "tags.`evomal.level` = 'generation'")
    assert sorted(r.data.tags["evomal.generation"] for r in generations) == ["0", "1"]
