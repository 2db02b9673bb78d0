"""Fault tolerance (docs/faults.md): hard kills, damaged files, bad inputs, concurrent runs.

The end-to-end tests run the real `snakemake` on a tiny search and compare against one uninterrupted
reference run (module fixture). Kills use the failpoints of evomal/faults.py: ``EVOMAL_FAILPOINT=<stage>``
SIGKILLs the Snakemake process (jobs are threads of it) at a point inside that stage.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from evomal import cli
from evomal.tasks import datasets as data
from evomal.pipeline import faults
from evomal.core import files
from evomal.pipeline import locks
from evomal.losses.lossfile import load_loss, save_loss
from evomal.pipeline.config import ConfigError, resolve_config
from evomal.gp.expressions import parse
from workflow_utils import (REPO, SNAKEFILE, SNAKEMAKE, candidate_fitness, contract_files, snakemake,
                            tiny_config, write_config)

EXP = "tiny"
#: TINY_CONFIG without transfer: every stage the faults concern, a few seconds less per run
FAULT_CONFIG = tiny_config(transfer=[])

#: Installed with PYTHONPATH into the reference run: logs every file opened for writing and every rename
#: (CPython audit events), so that the test can check that each result file appeared by an atomic rename.
AUDIT_HOOK = '''
import os, sys

_LOG = os.environ.get("EVOMAL_TEST_WRITE_AUDIT")
if _LOG:
    _FD = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _path(p):
        return os.path.abspath(os.fsdecode(p)) if isinstance(p, (str, bytes, os.PathLike)) else None

    def _hook(event, args):
        if event == "open" and len(args) == 3 and isinstance(args[2], int) and args[2] & _WRITE:
            path = _path(args[0])
            if path:
                os.write(_FD, f"{os.getpid()}\\topen\\t{path}\\n".encode())
        elif event == "os.rename":
            src, dst = _path(args[0]), _path(args[1])
            if src and dst:
                os.write(_FD, f"{os.getpid()}\\trename\\t{src}\\t{dst}\\n".encode())

    sys.addaudithook(_hook)
'''


# --------------------------------------------------------------------------- helpers
def exp_dir(workdir: Path) -> Path:
    return workdir / "results" / EXP


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def candidate_mtimes(exp: Path) -> dict[Path, int]:
    """Finished candidate files; one being written at a kill is a hidden temporary name (the next run removes it)."""
    return {p: p.stat().st_mtime_ns for p in exp.glob("gen_*/candidates/*/*")
            if p.is_file() and not p.name.startswith(".")}


def lock_files(workdir: Path) -> list[Path]:
    return sorted((workdir / ".snakemake" / "locks").glob("*.lock"))


def evaluated_ids(gen: Path) -> list[str]:
    return [c["id"] for c in json.loads((gen / "filter.json").read_text())["candidates"]
            if c["decision"] == "evaluate"]


def truncate(path: Path, keep: float = 0.5) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def mlflow_runs(workdir: Path, view: str = "active") -> list:
    """Every run of the experiment in the workdir's MLflow database (active or deleted ones)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    db = workdir / "results" / "mlflow.db"
    if not db.exists():  # MLflow would create it
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(EXP)
    if experiment is None:
        return []
    view_type = {"active": ViewType.ACTIVE_ONLY, "deleted": ViewType.DELETED_ONLY}[view]
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], run_view_type=view_type, max_results=1000,
                                  page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def assert_mlflow_has_no_duplicates(workdir: Path) -> None:
    """One active run per tracking key (pipeline, generation, candidate), none deleted, and the tree
    matches the result files (evomal.results.tracking.tracking_mismatches)."""
    from evomal.results.tracking import tracking_mismatches

    runs = mlflow_runs(workdir)
    per_key = collections.Counter(r.data.tags.get("evomal.key") for r in runs)
    assert None not in per_key, "a run without its evomal.key tag"
    assert all(n == 1 for n in per_key.values()), {k: n for k, n in per_key.items() if n > 1}
    per_candidate = collections.Counter((r.data.tags.get("evomal.generation"), r.data.params.get("id"))
                                        for r in runs if r.data.tags.get("evomal.level") == "candidate")
    assert per_candidate and all(n == 1 for n in per_candidate.values()), per_candidate
    rows = sum(len(pd.read_csv(t, sep="\t")) for t in exp_dir(workdir).glob("gen_*/fitness.tsv"))
    assert len(per_candidate) == rows
    # nothing had to be replaced either: a resumed tracking job finishes runs, it never recreates them
    assert mlflow_runs(workdir, "deleted") == []
    problems = tracking_mismatches(f"sqlite:///{workdir}/results/mlflow.db", EXP, exp_dir(workdir))
    assert not problems, problems


def start_snakemake(workdir: Path, *args: str, env: dict | None = None,
                    stdout=subprocess.PIPE) -> subprocess.Popen:
    """``snakemake`` in the background; output to pipes, or both streams to the file ``stdout``."""
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", "config.yaml", "--cores", "2", *args]
    stderr = subprocess.PIPE if stdout is subprocess.PIPE else subprocess.STDOUT
    return subprocess.Popen(cmd, cwd=workdir, stdout=stdout, stderr=stderr, text=True,
                            env={**os.environ, **(env or {})})


def fault_exp() -> dict:
    return resolve_config(FAULT_CONFIG)["experiments"][EXP]


@pytest.fixture
def torch_threads():
    """Stage functions set torch's thread count (use_threads); give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- the reference run
@dataclasses.dataclass
class Reference:
    workdir: Path
    audit: Path  # lines "<pid>\topen\t<path>" and "<pid>\trename\t<src>\t<dst>" of both runs
    first_pid: int
    second: subprocess.CompletedProcess  # the run started while the reference run held the lock
    second_pid: int
    first_alive_after_second: bool
    locks_before_second: list
    locks_after_second: list


def wait_for_lock_owner(workdir: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``proc`` holds the lock (its onstart recorded it as the owner)."""
    record = workdir / ".snakemake" / locks.RECORDS / f"{proc.pid}@{socket.gethostname()}.json"
    deadline = time.monotonic() + timeout
    while not record.exists():
        assert proc.poll() is None, f"the run ended before taking its lock (status {proc.returncode})"
        assert time.monotonic() < deadline, "the run never took its lock"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """One uninterrupted run of FAULT_CONFIG, read only. Its writes are audited (AUDIT_HOOK), and a second
    `snakemake` on the same folder is started while it runs (test_a_second_run_..._is_refused).

    The reference is compared with the runs of the other tests, which run alone: were it damaged by the
    second run, they would all disagree with it."""
    root = tmp_path_factory.mktemp("faults-reference")
    hook_dir = root / "audit"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    workdir = root / "w"
    write_config(workdir, FAULT_CONFIG)
    audit = root / "writes.log"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")])),
           "EVOMAL_TEST_WRITE_AUDIT": str(audit), "EVOMAL_FAILPOINT": ""}
    with open(root / "first.log", "w") as log:
        first = start_snakemake(workdir, env=env, stdout=log)
        try:
            wait_for_lock_owner(workdir, first)
            before = lock_files(workdir)
            second = start_snakemake(workdir, env=env)
            out, err = second.communicate(timeout=300)
            alive = first.poll() is None
            after = lock_files(workdir)
            first.wait(timeout=900)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert first.returncode == 0, (root / "first.log").read_text()[-6000:]
    done = subprocess.CompletedProcess(second.args, second.returncode, out, err)
    return Reference(workdir, audit, first.pid, done, second.pid, alive, before, after)


@pytest.fixture
def damaged_copy(reference, tmp_path):
    """A copy of the reference run, to damage."""
    return copy_run(reference.workdir, tmp_path / "w")


# --------------------------------------------------------------------------- hard kills
KILL_STAGES = ["population", "filter", "optimize", "evaluate", "track", "test_run"]


def test_every_failpoint_stage_has_a_failpoint_call():
    """faults.STAGES names the stages with a failpoint; each must really call it somewhere."""
    calls = set()
    for path in (REPO / "evomal").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "failpoint":
                arg = node.args[0]
                if isinstance(arg, ast.Constant):
                    calls.add(arg.value)
                else:  # _shard_job(..., stage, ...): the per-candidate stages
                    calls.update({"compile", "optimize", "evaluate"})
    assert set(faults.STAGES) <= calls, set(faults.STAGES) - calls
    assert set(KILL_STAGES) <= set(faults.STAGES)


@pytest.mark.slow
@pytest.mark.parametrize("stage", KILL_STAGES)
def test_sigkill_during_a_stage_then_resume(reference, tmp_path, stage):
    """SIGKILL of `snakemake` inside a stage, then `snakemake`: it completes without --unlock, no
    finished candidate is recomputed, the files equal the uninterrupted run's, MLflow has no duplicates."""
    workdir = tmp_path / "w"
    write_config(workdir, FAULT_CONFIG)
    exp = exp_dir(workdir)
    killed = snakemake(workdir, env={"EVOMAL_FAILPOINT": stage}, check=False)
    assert killed.returncode == -signal.SIGKILL, output(killed)[-3000:]
    assert f"evomal: failpoint {stage}: killing process" in killed.stderr
    assert lock_files(workdir), "the kill should have left Snakemake's locks behind"
    finished = candidate_mtimes(exp)
    if stage in ("optimize", "evaluate"):
        name = {"optimize": "optimized.pt", "evaluate": "fitness.json"}[stage]
        done_at_kill = [p for p in finished if p.name == name]
        assert done_at_kill, f"the kill came before any candidate finished its {stage} stage"
    runs_at_kill = {r.info.run_id: r.data.tags.get("evomal.key") for r in mlflow_runs(workdir)
                    if "evomal.digest" in r.data.tags}
    if stage == "track":
        assert any(k.count("/") == 2 for k in runs_at_kill.values()), "no candidate was tracked before the kill"

    resumed = snakemake(workdir, env={"EVOMAL_FAILPOINT": ""})
    assert "removed the locks of a killed run" in resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "a finished candidate file was rewritten"
    if stage in ("optimize", "evaluate"):
        for path in done_at_kill:  # the resumed shard job found it and reused it
            gen, cand = path.parent.parent.parent.name, path.parent.name
            logs = "".join(p.read_text() for p in (exp / "logs" / gen).glob(f"{stage}_*.log"))
            assert f"{cand} reused" in logs, logs
    reference_exp = exp_dir(reference.workdir)
    assert contract_files(exp) == contract_files(reference_exp)
    assert candidate_fitness(exp) == candidate_fitness(reference_exp)
    assert_mlflow_has_no_duplicates(workdir)
    # runs complete at the kill are kept as they were (same run ids), never logged a second time
    active = {r.info.run_id for r in mlflow_runs(workdir)}
    assert set(runs_at_kill) <= active


# --------------------------------------------------------------------------- atomic writes
def _boom(*args, **kwargs):
    raise OSError("simulated crash between writing and renaming")


WRITERS = {
    "write_json": lambda p: files.write_json(p, {"fitness": 0.5, "curve": list(range(1000))}),
    "write_tsv": lambda p: files.write_tsv(p, pd.DataFrame({"id": ["a", "b"], "fitness": [0.1, math.inf]})),
    "write_tensors": lambda p: files.write_tensors(p, {"weights": torch.ones(5), "curve": [1.0, 0.5]}),
    "atomic_write_bytes": lambda p: files.atomic_write_bytes(p, b"x" * 100_000),
    "save_loss": lambda p: save_loss(p, parse("mul(-1, mul(y, log(f)))"), "classification", [1.0] * 5),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("existing", [False, True])
def test_a_crash_before_the_rename_leaves_no_partial_file(tmp_path, monkeypatch, writer, existing):
    target = tmp_path / "gen_0" / "result"
    if existing:
        target.parent.mkdir()
        target.write_bytes(b"previous complete content\n")
    monkeypatch.setattr(os, "replace", _boom)
    with pytest.raises(OSError, match="simulated crash"):
        WRITERS[writer](target)
    monkeypatch.undo()
    if existing:
        assert target.read_bytes() == b"previous complete content\n"
    else:
        assert not target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == (["result"] if existing else []), \
        "a temporary file was left behind"
    WRITERS[writer](target)  # and without the crash, the file is complete
    assert target.stat().st_size > 0


@pytest.mark.slow  # needs the files of a real run (the reference fixture)
def test_a_stage_crashing_mid_write_leaves_no_partial_output(reference, tmp_path, monkeypatch):
    """gather_generation writes fitness.tsv then archive.json: a crash in the second rename leaves
    the first complete and the second absent, never a half file."""
    from evomal.pipeline.gathering import gather_generation

    gen = copy_run(exp_dir(reference.workdir) / "gen_0", tmp_path / "gen_0")
    (gen / "fitness.tsv").unlink()
    (gen / "archive.json").unlink()
    real_replace, calls = os.replace, []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated crash between writing and renaming")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError, match="simulated crash"):
        gather_generation(gen / "filter.json", gen / "population.json", gen / "fitness.tsv",
                          gen / "archive.json", generation=0)
    assert (gen / "fitness.tsv").read_bytes() == (exp_dir(reference.workdir) / "gen_0" / "fitness.tsv").read_bytes()
    assert not (gen / "archive.json").exists()
    assert not list(gen.glob(".*.tmp"))


@pytest.mark.slow
def test_every_result_file_of_a_run_appeared_by_an_atomic_rename(reference):
    """Audit of the reference run: under results/<experiment>/ (logs aside) every file opened for writing
    was a temporary file, and every result file is the target of a rename."""
    workdir, audit = reference.workdir, reference.audit
    exp = exp_dir(workdir).resolve()
    opened, renamed = set(), {}
    for line in audit.read_text().splitlines():
        _, kind, *paths = line.split("\t")
        if kind == "open":
            opened.add(Path(paths[0]))
        else:
            renamed[Path(paths[1])] = Path(paths[0])
    assert renamed, f"the audit hook did not run ({audit})"

    def is_result(path: Path) -> bool:
        return exp in path.parents and (exp / "logs") not in path.parents

    def is_temp(path: Path) -> bool:
        return path.name.startswith(".") and path.name.endswith(".tmp")

    direct = sorted(str(p) for p in opened if is_result(p) and not is_temp(p))
    assert not direct, f"result files written in place (not via a temp file + rename): {direct}"
    results = [p.resolve() for p in exp.rglob("*") if p.is_file() and is_result(p.resolve())]
    assert len(results) > 40
    not_renamed = sorted(str(p) for p in results if p not in renamed)
    assert not not_renamed, f"result files that did not appear by a rename: {not_renamed}"
    assert all(is_temp(src) and src.parent == dst.parent for dst, src in renamed.items() if is_result(dst))


# --------------------------------------------------------------------------- damaged files
@pytest.mark.slow
def test_a_truncated_filter_json_is_named_and_repaired(reference, damaged_copy):
    workdir = damaged_copy
    gen0 = exp_dir(workdir) / "gen_0"
    truncate(gen0 / "filter.json")
    proc = snakemake(workdir, check=False)
    assert proc.returncode != 0
    assert "corrupted results file results/tiny/gen_0/filter.json: not valid JSON" in output(proc)
    # the message's repair: delete it, name it as a target, then run the workflow
    (gen0 / "filter.json").unlink()
    snakemake(workdir, "results/tiny/gen_0/filter.json")
    snakemake(workdir)
    assert contract_files(exp_dir(workdir)) == contract_files(exp_dir(reference.workdir))


@pytest.mark.slow
def test_damaged_candidate_files_are_named_and_repaired(reference, damaged_copy):
    """A truncated optimized.pt (of the best loss) and a truncated fitness.json, in two shards: when the
    generation's evaluate jobs run again, the one that reads the damaged optimized.pt fails naming it and
    the repair the message gives works; the other recomputes its own damaged fitness.json.
    (select_best reading a bad optimized.pt: test_a_malicious_pickle_is_refused_by_every_reader. A plain
    `snakemake` over damaged candidate files of a gathered generation: tests/test_reliability.py.)"""
    workdir = damaged_copy
    exp = exp_dir(workdir)
    best = json.loads((exp / "best" / "loss.json").read_text())
    gen = exp / f"gen_{best['generation']}"
    shard_of = {c["id"]: c["shard"] for c in json.loads((gen / "filter.json").read_text())["candidates"]
                if c["decision"] == "evaluate"}
    other = next(c for c, s in shard_of.items() if s != shard_of[best["id"]])
    optimized_pt = gen / "candidates" / best["id"] / "optimized.pt"
    fitness_json = gen / "candidates" / other / "fitness.json"
    truncate(optimized_pt)
    truncate(fitness_json)
    rel = lambda p: str(p.relative_to(workdir))  # noqa: E731
    # the evaluate jobs run again (as after an interrupted evaluation): a changed optimized.pt is
    # evaluated anew, so it is read
    for manifest in (gen / "shards").glob("evaluate_*.json"):
        manifest.unlink()
    proc = snakemake(workdir, "--force", rel(gen / "fitness.tsv"), check=False)
    assert proc.returncode != 0
    text = output(proc)
    assert f"corrupted results file {rel(optimized_pt)}: cannot be loaded as tensors" in text
    hint = f"delete {rel(optimized_pt)} and the folder {rel(gen / 'shards')}, then run `snakemake`"
    assert hint in text
    logs = "".join(p.read_text() for p in (exp / "logs" / gen.name).glob("evaluate_*.log"))
    assert f"{rel(fitness_json)}: damaged, recomputing it (corrupted results file" in logs, logs
    assert json.loads(fitness_json.read_text())["fitness"] == candidate_fitness(exp_dir(reference.workdir))[
        f"{gen.name}/{other}"]
    # the repair the message gives: the deleted file is recomputed, the intact ones reused
    optimized_pt.unlink()
    shutil.rmtree(gen / "shards")
    snakemake(workdir)
    assert "Nothing to be done" in output(snakemake(workdir, "-n"))
    assert contract_files(exp) == contract_files(exp_dir(reference.workdir))
    assert candidate_fitness(exp) == candidate_fitness(exp_dir(reference.workdir))
    original = exp_dir(reference.workdir) / optimized_pt.relative_to(exp)
    assert torch.equal(files.read_tensors(optimized_pt)["weights"], files.read_tensors(original)["weights"])


@pytest.mark.slow  # needs the files of a real run (the reference fixture)
def test_evomal_show_names_a_damaged_file(reference, damaged_copy, capsys):
    exp = exp_dir(damaged_copy)
    truncate(exp / "best" / "loss.json")
    assert cli.main(["show", str(exp)]) == 1
    err = capsys.readouterr().err
    assert f"corrupted results file {exp / 'best' / 'loss.json'}: not valid JSON" in err
    # the listing reports the damaged experiment instead of failing
    assert cli.main(["show", "--results-dir", str(exp.parent)]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and str(exp / "best" / "loss.json") in out
    # a table cut in the middle of a line: pandas would read it, half a row included
    (exp / "best" / "loss.json").write_bytes((exp_dir(reference.workdir) / "best" / "loss.json").read_bytes())
    truncate(exp / "gen_1" / "fitness.tsv")
    assert cli.main(["show", str(exp)]) == 1
    assert f"corrupted results file {exp / 'gen_1' / 'fitness.tsv'}: truncated" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_result_files_raise_naming_the_file(tmp_path, damage):
    paths = {"json": tmp_path / "fitness.json", "pt": tmp_path / "optimized.pt", "tsv": tmp_path / "fitness.tsv"}
    files.write_json(paths["json"], {"fitness": 0.25, "curve": list(range(50))})
    files.write_tensors(paths["pt"], {"weights": torch.ones(7), "curve": [0.5] * 50})
    files.write_tsv(paths["tsv"], pd.DataFrame({"id": ["a", "b"], "fitness": [0.1, 0.2]}))
    for path in paths.values():
        if damage == "truncate":
            truncate(path, 0.6)
        elif damage == "garbage":
            path.write_bytes(b"\x00\xff garbage \x13" * 10)
        else:
            path.write_bytes(b"")
    for reader, path in ((files.read_json, paths["json"]), (files.read_tensors, paths["pt"]),
                         (files.read_tsv, paths["tsv"])):
        with pytest.raises(files.ResultFileError, match="corrupted results file") as info:
            reader(path)
        assert str(path) in str(info.value) and "to repair it" in str(info.value)


# --------------------------------------------------------------------------- loading never executes code
class _Payload:
    """Unpickling this creates the marker file (what an attacker's code would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_pt(path: Path, marker: Path) -> None:
    path.unlink(missing_ok=True)
    torch.save({"weights": torch.ones(3), "curve": [], "fingerprint": "x", "payload": _Payload(marker)}, path)


@pytest.mark.slow  # needs the files of a real run (the reference fixture)
def test_a_malicious_pickle_is_refused_by_every_reader(reference, tmp_path, torch_threads):
    from evomal.pipeline.candidates import evaluate_shard
    from evomal.pipeline.selection import select_best

    marker = tmp_path / "code-was-executed"
    # the payload works: an unrestricted torch.load runs it (so the refusals below mean something)
    probe = tmp_path / "probe.pt"
    _malicious_pt(probe, marker)
    torch.load(probe, weights_only=False)
    assert marker.exists()
    marker.unlink()

    exp = copy_run(exp_dir(reference.workdir), tmp_path / "results" / EXP)
    best = json.loads((exp / "best" / "loss.json").read_text())
    gen = exp / f"gen_{best['generation']}"
    planted = gen / "candidates" / best["id"] / "optimized.pt"
    _malicious_pt(planted, marker)

    with pytest.raises(files.ResultFileError, match="cannot be loaded as tensors") as info:
        files.read_tensors(planted)
    assert str(planted) in str(info.value)
    shard = next(c["shard"] for c in json.loads((gen / "filter.json").read_text())["candidates"]
                 if c["id"] == best["id"])
    with pytest.raises(files.ResultFileError, match=str(planted)):
        evaluate_shard(gen / "filter.json", shard, tmp_path / "manifest.json", exp=fault_exp())
    with pytest.raises(files.ResultFileError, match=str(planted)):
        select_best(gen.parent / f"gen_{fault_exp()['search']['generations'] - 1}" / "archive.json", exp,
                    tmp_path / "best.json", exp=fault_exp())
    assert not marker.exists(), "loading a results file executed code"


def test_a_loss_file_cannot_inject_code(tmp_path):
    """loss.json is compiled to Python source: only known primitives and numbers can reach it."""
    marker = tmp_path / "code-was-executed"
    path = tmp_path / "loss.json"
    doc = save_loss(path, parse("mul(-1, mul(y, log(f)))"), "classification", [1.0] * 5)
    attacks = [
        {**doc, "tree": [f"__import__('pathlib').Path({str(marker)!r}).touch()", "y", "f"]},
        {**doc, "weights": [f"__import__('pathlib').Path({str(marker)!r}).touch()"] + [1.0] * 4},
        {**doc, "kind": "classification\nimport pathlib"},
    ]
    for attack in attacks:
        path.write_text(json.dumps(attack))
        with pytest.raises(ValueError, match=str(path)):
            loss = load_loss(path)
            loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    assert not marker.exists()


def _calls(tree) -> list[tuple[str, ast.Call]]:
    """(dotted name, call) of every call in a module, e.g. ("torch.load", ...)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            out.append((".".join(reversed(parts)), node))
    return out


def test_the_package_never_unpickles():
    """No pickle, and torch.load only with weights_only=True (grep-style, over the AST of evomal/)."""
    unsafe = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "dill.loads",
              "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pd.read_pickle", "pandas.read_pickle",
              "yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load", "marshal.loads",
              "shelve.open"}
    problems, torch_loads = [], 0
    for path in sorted((REPO / "evomal").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal")
                       for n in names):
                    problems.append(f"{path.name}:{node.lineno}: imports {names}")
        for name, call in _calls(tree):
            where = f"{path.name}:{call.lineno}: {name}"
            if name in unsafe:
                problems.append(where)
            elif name.endswith(("np.load", "numpy.load")):
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                    problems.append(f"{where} without allow_pickle=False")
            elif name == "torch.load":
                torch_loads += 1
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where} without weights_only=True")
    assert not problems, problems
    assert torch_loads >= 1  # read_tensors: the scan sees it


# --------------------------------------------------------------------------- invalid inputs: config
INVALID_CONFIGS = [
    # (change to the tiny experiment, key named, allowed values named)
    ({"search": {"population": -3}}, "experiments.tiny.search.population", "minimum of 1"),
    ({"search": {"population": 0}}, "experiments.tiny.search.population", "minimum of 1"),
    ({"search": {"crossover": 0.9, "mutation": 0.25}}, "experiments.tiny.search", "crossover + mutation must be <= 1"),
    ({"search": {"crossover": 1.5}}, "experiments.tiny.search.crossover", "maximum of 1"),
    ({"dataset": "no_such_data"}, "experiments.tiny.dataset", "known: breast_cancer, california, cifar10"),
    ({"dataset": {"name": "no_such_data"}}, "experiments.tiny.dataset", "known: breast_cancer"),
    ({"model": "no_such_net"}, "experiments.tiny.model", "known: allcnnc, cnn, lenet5, linear, mlp"),
    ({"transfer": [{"dataset": "wine", "model": "no_such_net"}]}, "experiments.tiny.transfer.0.model",
     "known: allcnnc"),
    ({"method": "sgd"}, "experiments.tiny.method", "unknown method 'sgd'; known: baseline, evomal, gplfl"),
    ({"meta_test": {"seeds": []}}, "experiments.tiny.meta_test.seeds", "should be non-empty"),
]


@pytest.mark.parametrize("change, key, allowed", INVALID_CONFIGS, ids=[c[1] + ":" + c[2][:12] for c in INVALID_CONFIGS])
def test_an_invalid_config_names_the_key_and_the_allowed_values(change, key, allowed):
    with pytest.raises(ConfigError) as info:
        resolve_config(tiny_config(**change))
    message = str(info.value)
    assert f"config key {key}:" in message and allowed in message, message


@pytest.mark.slow
def test_an_invalid_config_fails_before_any_job(tmp_path):
    write_config(tmp_path, tiny_config(transfer=[{"dataset": "wine", "model": "no_such_net"}],
                                       search={"population": -3}))
    proc = snakemake(tmp_path, check=False, timeout=120)
    assert proc.returncode != 0
    text = output(proc)
    assert "config key experiments.tiny.search.population: -3 is less than the minimum of 1" in text
    assert not (tmp_path / "results").exists()
    assert "rule " not in text and "Finished jobid" not in text


# --------------------------------------------------------------------------- invalid inputs: expressions
@pytest.mark.slow
def test_a_hand_edited_population_fails_or_is_marked_invalid(reference, damaged_copy):
    workdir = damaged_copy
    exp = exp_dir(workdir)
    population = exp / "gen_1" / "population.json"
    doc = json.loads(population.read_text())
    target = doc["individuals"][1]["id"]

    # an expression that does not parse: the filter job fails with the expression and the position
    doc["individuals"][1]["expression"] = "add(y, f"
    population.write_text(json.dumps(doc, indent=1))
    proc = snakemake(workdir, check=False)
    assert proc.returncode != 0
    text = output(proc)
    assert "cannot parse expression 'add(y, f' at position 8" in text, text[-3000:]
    assert f"results/tiny/gen_1/population.json: individual {target}" in text

    # an expression without y: marked invalid (fitness inf, with the reason); the generation completes
    doc["individuals"][1]["expression"] = "add(f, 1)"
    population.write_text(json.dumps(doc, indent=1))
    snakemake(workdir, "results/tiny/gen_1/fitness.tsv")
    record = next(c for c in json.loads((exp / "gen_1" / "filter.json").read_text())["candidates"]
                  if c["id"] == target)
    assert record["decision"] == "invalid" and "lacks y" in record["reason"]
    table = pd.read_csv(exp / "gen_1" / "fitness.tsv", sep="\t", keep_default_na=False).set_index("id")
    assert table.loc[target, "decision"] == "invalid" and math.isinf(float(table.loc[target, "fitness"]))
    assert "lacks y" in table.loc[target, "reason"]
    assert len(table) == len(doc["individuals"])
    # the other individuals keep the reference's results
    ref = pd.read_csv(exp_dir(reference.workdir) / "gen_1" / "fitness.tsv", sep="\t", keep_default_na=False)
    assert (table.drop(index=target)["fitness"].tolist()
            == ref.set_index("id").drop(index=target)["fitness"].tolist())


# --------------------------------------------------------------------------- bad losses
ALL_REJECTED = ["mul(y, f)", "add(y, f)", "sub(y, f)", "mul(y, sign(f))", "mul(y, square(f))",
                "mul(y, tanh(f))", "mul(y, abs(f))", "add(y, mul(y, f))"]


@pytest.mark.slow
def test_a_generation_without_any_accepted_loss_still_breeds_the_next(tmp_path):
    workdir = tmp_path / "w"
    write_config(workdir, FAULT_CONFIG)
    snakemake(workdir, "results/tiny/gen_0/population.json")
    path = exp_dir(workdir) / "gen_0" / "population.json"
    doc = json.loads(path.read_text())
    assert not (exp_dir(workdir) / "gen_0" / "filter.json").exists()
    for individual, expression in zip(doc["individuals"], ALL_REJECTED, strict=True):
        individual["expression"] = expression
    path.write_text(json.dumps(doc, indent=1))
    snakemake(workdir, "results/tiny/gen_1/fitness.tsv")
    gen0 = pd.read_csv(exp_dir(workdir) / "gen_0" / "fitness.tsv", sep="\t", keep_default_na=False)
    assert list(gen0["expression"]) == ALL_REJECTED
    assert set(gen0["decision"]) == {"rejected"}
    assert all(math.isinf(float(f)) for f in gen0["fitness"])
    assert all(r.startswith("rejected: ") for r in gen0["reason"])
    # no gradient at all (sign is flat; summed over classes, y + f is constant): nothing improves
    no_gradient = gen0.set_index("expression").loc[["mul(y, sign(f))", "add(y, f)"], "reason"]
    assert all("does not improve the task metric" in r for r in no_gradient), list(no_gradient)
    archive = json.loads((exp_dir(workdir) / "gen_0" / "archive.json").read_text())
    assert archive["best"] is None
    gen1 = pd.read_csv(exp_dir(workdir) / "gen_1" / "fitness.tsv", sep="\t", keep_default_na=False)
    assert len(gen1) == len(doc["individuals"])
    assert set(gen1["origin"]) - {"copy"}, "generation 1 was bred (crossover, mutation), not only copied"


def test_losses_that_overflow_or_give_nan_get_inf_fitness(tmp_path, torch_threads):
    """The evaluate stage: inf with the reason for each bad loss, and the generation still completes.
    (A loss without a gradient is rejected by the filter first: see ALL_REJECTED.)"""
    from evomal.losses.modules import initial_weights
    from evomal.gp.operators import init_population
    from evomal.pipeline.candidates import evaluate_shard
    from evomal.pipeline.gathering import gather_generation

    exp = fault_exp()
    gen = tmp_path / "gen_0"
    ce = "mul(-1, mul(y, log(f)))"  # edges: -1, mul, y, log, f
    big = "mul(-1, square(square(square(mul(y, f)))))"
    cases = {  # id -> (expression, edge weights as the local search might leave them, reason expected)
        "g0-000": (ce, [1.0] * 5, None),
        "g0-001": (ce, [math.nan] + [1.0] * 4, "non-finite"),  # a diverged local search: NaN weights
        "g0-002": (big, [1e30] * parse(big).num_edges, "non-finite"),  # the loss overflows float32
    }
    individuals = [i.to_dict() for i in init_population(len(cases), seed=0, init_height=(2, 2), max_height=10)]
    records = []
    for ind, (cid, (expression, weights, _)) in zip(individuals, cases.items()):
        ind.update(id=cid, expression=expression)
        records.append({"id": cid, "expression": expression, "key": cid, "key_method": "text",
                        "decision": "evaluate", "reason": "new loss", "reuse_of": None, "shard": 0,
                        "signature": None, "rejection_improvement": 1.0})
        tree = parse(expression)
        cdir = gen / "candidates" / cid
        save_loss(cdir / "loss.json", tree, "classification", initial_weights(tree, seed=0), id=cid)
        files.write_tensors(cdir / "optimized.pt", {"weights": torch.tensor(weights), "curve": [],
                                                   "status": "ok", "reason": "", "seconds": 0.0})
    files.write_json(gen / "population.json", {"experiment": EXP, "generation": 0, "seed": 0,
                                               "individuals": individuals})
    files.write_json(gen / "filter.json", {"generation": 0, "shards": 1, "counts": {}, "candidates": records})
    evaluate_shard(gen / "filter.json", 0, gen / "shards" / "evaluate_0.json", exp=exp)
    gather_generation(gen / "filter.json", gen / "population.json", gen / "fitness.tsv", gen / "archive.json",
                      generation=0)
    table = files.read_tsv(gen / "fitness.tsv").set_index("id")
    for cid, (_, _, reason) in cases.items():
        fitness = float(table.loc[cid, "fitness"])
        if reason is None:
            assert math.isfinite(fitness) and fitness < 0.9
        else:
            assert math.isinf(fitness), cid
            assert reason in table.loc[cid, "reason"], table.loc[cid, "reason"]
            assert reason in files.read_json(gen / "candidates" / cid / "fitness.json")["reason"]
    assert files.read_json(gen / "archive.json")["best"]["id"] == "g0-000"


# --------------------------------------------------------------------------- invalid data
def _california_files(folder: Path, bad: str) -> None:
    rng = np.random.default_rng(0)
    n = 120
    table = np.column_stack([
        rng.uniform(-124, -114, n), rng.uniform(32, 42, n), rng.integers(1, 52, n),
        rng.integers(100, 5000, n), rng.integers(20, 1000, n), rng.integers(50, 3000, n),
        rng.integers(20, 900, n), rng.uniform(0.5, 15, n), rng.uniform(15000, 500000, n)]).astype(float)
    if bad == "nan":
        table[17, 7] = np.nan  # median income
    else:
        table[17, 6] = 0  # households: rooms / households is infinite
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "cal_housing.data", table, delimiter=",", fmt="%.6g")


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_data_with_nan_or_inf_is_refused(tmp_path, bad):
    _california_files(tmp_path / "california", bad)
    with pytest.raises(ValueError, match=r"dataset 'california': the (train|val|test) split has \d+ NaN or "
                                         r"infinite value\(s\) in its inputs"):
        data.load_task("california", data_dir=str(tmp_path / "california"))


@pytest.mark.slow
def test_data_with_nan_is_refused_before_the_search_starts(tmp_path):
    _california_files(tmp_path / "data" / "california", "nan")
    config = tiny_config(transfer=[], dataset={"name": "california", "data_dir": "data/california"})
    config["experiments"][EXP]["dataset"].pop("train_size")
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "--until", "filter", check=False)
    assert proc.returncode != 0
    assert "dataset 'california': the" in output(proc) and "NaN or infinite value(s)" in output(proc)
    gen0 = exp_dir(tmp_path) / "gen_0"
    assert not (gen0 / "filter.json").exists() and not (gen0 / "candidates").exists()


# --------------------------------------------------------------------------- concurrent runs and locks
@pytest.mark.slow
def test_a_second_run_on_the_same_results_is_refused(reference):
    """Started while the reference run works: refused by Snakemake's lock, with its message; the stale-lock
    cleanup leaves the live run's locks alone; the second run writes nothing; the first completes."""
    assert reference.first_alive_after_second, "the first run ended before the second was refused: inconclusive"
    second = reference.second
    assert second.returncode != 0
    assert "Directory cannot be locked" in output(second)
    assert "removed the locks of a killed run" not in output(second)
    assert reference.locks_before_second and reference.locks_after_second == reference.locks_before_second
    written = [line for line in reference.audit.read_text().splitlines()
               if line.startswith(f"{reference.second_pid}\t") and "/results/" in line]
    assert not written, written
    # the first run completed (the fixture checks its exit status) and has every file of the contract
    assert contract_files(exp_dir(reference.workdir))
    assert_mlflow_has_no_duplicates(reference.workdir)


HOLD_RECORD = """
import sys, time
from evomal.pipeline import locks
held = locks.record_lock_owner(sys.argv[2:], sys.argv[1])
print("recorded", flush=True)
if "--exit" not in sys.argv:
    time.sleep(600)
"""


def _run_holding(workdir: Path, *lock_files: Path, live: bool) -> subprocess.Popen:
    """A process that records ``lock_files`` as its own Snakemake locks, then lives on (or exits)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_RECORD, str(workdir), *map(str, lock_files),
                             *([] if live else ["--exit"])], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "recorded"
    if not live:
        proc.wait()
    return proc


def test_stale_lock_cleanup_spares_live_and_unknown_locks(tmp_path):
    """Each run records only its own lock files; a later run removes exactly those of runs that are gone.

    Two runs of one checkout: the dead one's locks go, the live one's stay (before, a single owner record
    named every lock file of the checkout, so a killed run's record took a live run's locks with it)."""
    lock_dir = tmp_path / ".snakemake" / "locks"
    lock_dir.mkdir(parents=True)

    def take(n: int) -> list[Path]:
        paths = [lock_dir / f"{n}.input.lock", lock_dir / f"{n}.output.lock"]
        for path in paths:
            path.write_text(f"results/exp{n}/gen_0/population.json\n")
        return paths

    live_locks, dead_locks = take(0), take(1)
    live = _run_holding(tmp_path, *live_locks, live=True)
    try:
        _run_holding(tmp_path, *dead_locks, live=False)
        state = locks.clear_stale_locks(tmp_path)
        assert len(state.removed) == 1 and [r["pid"] for r in state.live] == [live.pid]
        assert sorted(lock_dir.glob("*.lock")) == sorted(live_locks), "a live run's locks were removed"
        assert state.unknown == []
        notes = locks.lock_notes(state)
        assert any(f"removed the locks of a killed run (pid {state.removed[0]})" in n for n in notes)
        assert any(f"another run is active in this folder (pid {live.pid}" in n and "do not use --unlock" in n
                   for n in notes)

        # a dead run's lock files replaced by new ones under the same names (a run that has just taken its
        # lock, before its onstart): not the recorded files, so they stay, and are reported as unrecorded
        _run_holding(tmp_path, *take(1), live=False)
        for path in take(1):
            path.unlink()
        time.sleep(0.01)
        new = take(1)
        state = locks.clear_stale_locks(tmp_path)
        assert state.removed == [] and sorted(state.unknown) == sorted(new)
        assert sorted(lock_dir.glob("*.lock")) == sorted(live_locks + new)
        assert any("rm " + " ".join(map(str, sorted(new))) in n for n in locks.lock_notes(state))
    finally:
        live.kill()
        live.wait()
    # the live run is killed now: its flock went with it, and so do its locks
    state = locks.clear_stale_locks(tmp_path)
    assert state.removed == [live.pid]
    assert sorted(lock_dir.glob("*.lock")) == sorted(new)


def test_an_experiment_is_claimed_by_one_run_at_a_time(tmp_path):
    """Claims in the results folder: refused while the holder lives, from any checkout; free once it dies."""
    code = ("import sys, time\nfrom evomal.pipeline import locks\n"
            "held = locks.claim_experiments(sys.argv[1], ['x'], workdir=sys.argv[2])\n"
            "print('claimed', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "results"), str(tmp_path / "checkout-1")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(locks.ClaimError, match=rf"experiment x in .* is being written by another run "
                                                   rf"\(pid {holder.pid} on .* in {tmp_path / 'checkout-1'}\).*kill {holder.pid}"):
            locks.claim_experiments(tmp_path / "results", ["y", "x"], workdir=tmp_path / "checkout-2")
        # what was claimed before the refusal is given back
        locks.claim_experiments(tmp_path / "results", ["y"]).release()
    finally:
        holder.kill()
        holder.wait()
    held = locks.claim_experiments(tmp_path / "results", ["x"])  # the killed holder's claim went with it
    held.release()
