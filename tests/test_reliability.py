"""Reliability, round two (docs/faults.md): runs beside each other, damage a run finds by itself, bad input.

The end-to-end tests drive the real `snakemake`. One scenario (module fixture) runs two tiny experiments,
``a`` and ``b``, in one checkout: run A of ``a`` is held inside its gather stage (a pausepoint,
evomal.pipeline.faults) while run B of ``b`` is killed, run C resumes ``b``, run D starts ``a`` again in
the same checkout and run E starts ``a`` from a second checkout that writes the same absolute results
folder; then A is let go. Its finished folder is then damaged (per-candidate files, a generation file,
stray temporary files) and repaired by a plain `snakemake`. The bad-input tests are parse-time or
onstart refusals, seconds each.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from evomal import cli
from evomal.core import files
from evomal.pipeline import locks, preflight, presets
from evomal.pipeline.config import ConfigError, resolve_config
from workflow_utils import SNAKEFILE, SNAKEMAKE, candidate_fitness, contract_files, snakemake, tiny_config, write_config


def two_experiments() -> dict:
    """Two tiny searches in one config (run one of them with --config run=[a] or run=[b])."""
    config = tiny_config(transfer=[], search={"population": 8, "generations": 1}, selection={"finalists": 1})
    tiny = config["experiments"].pop("tiny")
    config["experiments"] = {"a": tiny, "b": {**copy.deepcopy(tiny), "seed": 1}}
    config["run"] = ["a"]
    return config


def start(workdir: Path, *args: str, env: dict | None = None, log: Path) -> subprocess.Popen:
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", "config.yaml", "--cores", "2", *args]
    return subprocess.Popen(cmd, cwd=workdir, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def wait_paused(gate: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not Path(f"{gate}.paused").exists():
        assert proc.poll() is None, f"the run ended before its pausepoint ({proc.returncode}):\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "the run never reached its pausepoint"
        time.sleep(0.2)


def own_locks(workdir: Path, pid: int) -> list[tuple]:
    """The lock files a run recorded as its own: (name, inode, mtime), as the cleanup matches them."""
    record = workdir / ".snakemake" / locks.RECORDS / f"{pid}@{socket.gethostname()}.json"
    return sorted((i["name"], i["inode"], i["mtime_ns"]) for i in json.loads(record.read_text())["locks"])


def lock_files(workdir: Path) -> list[tuple]:
    """The lock files there now (a new run reuses a removed one's name: the name alone does not tell)."""
    return sorted((p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in (workdir / ".snakemake" / "locks").glob("*.lock"))


def text(proc) -> str:
    return proc.stdout + proc.stderr


@dataclasses.dataclass
class Scenario:
    workdir: Path
    a_pid: int
    a_status: int
    a_locks: list  # A's own lock files, from its record
    b: subprocess.CompletedProcess  # killed
    c_log: str
    c_status: int
    locks_while_c_ran: list  # lock files once C had cleaned up at parse time and taken its own
    d: subprocess.CompletedProcess  # a again, same checkout, while A runs
    e: subprocess.CompletedProcess  # a again, second checkout, same absolute results folder
    e_workdir: Path


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    root = tmp_path_factory.mktemp("reliability")
    workdir = root / "w"
    write_config(workdir, two_experiments())
    other = two_experiments()  # a second checkout writing the same absolute results folder
    other.update(results_dir=str(workdir / "results"), tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    e_workdir = root / "second-checkout"
    write_config(e_workdir, other)
    gate_a, gate_c = root / "release-a", root / "release-c"
    a = start(workdir, "--config", "run=[a]", log=root / "a.log",
              env={"EVOMAL_PAUSEPOINT": "gather", "EVOMAL_PAUSE_FILE": str(gate_a), "EVOMAL_FAILPOINT": ""})
    try:
        wait_paused(gate_a, a, root / "a.log")
        a_locks = own_locks(workdir, a.pid)
        b = snakemake(workdir, "--config", "run=[b]", env={"EVOMAL_FAILPOINT": "population"}, check=False)
        c = start(workdir, "--config", "run=[b]", log=root / "c.log",
                  env={"EVOMAL_PAUSEPOINT": "population", "EVOMAL_PAUSE_FILE": str(gate_c), "EVOMAL_FAILPOINT": ""})
        wait_paused(gate_c, c, root / "c.log")
        while_c = lock_files(workdir)
        gate_c.touch()
        c_status = c.wait(timeout=600)
        d = snakemake(workdir, "--config", "run=[a]", check=False, env={"EVOMAL_FAILPOINT": ""})
        e = snakemake(e_workdir, "--config", "run=[a]", check=False, env={"EVOMAL_FAILPOINT": ""})
        assert a.poll() is None, "A ended while it was held: the scenario is inconclusive"
        gate_a.touch()
        a_status = a.wait(timeout=600)
    finally:
        gate_a.touch()
        gate_c.touch()
        for proc in (a,) + ((c,) if "c" in locals() else ()):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Scenario(workdir, a.pid, a_status, a_locks, b, (root / "c.log").read_text(), c_status, while_c, d, e,
                    e_workdir)


@pytest.mark.slow
def test_resuming_a_killed_run_spares_the_locks_of_a_live_one(scenario):
    """Item 1: B killed beside a live A; C resumes B: it removes B's locks only, and A completes."""
    assert scenario.b.returncode == -signal.SIGKILL, text(scenario.b)[-3000:]
    b_pid = int(re.search(r"failpoint population: killing process (\d+)", scenario.b.stderr)[1])
    assert f"removed the locks of a killed run (pid {b_pid}); resuming" in scenario.c_log
    assert f"removed the locks of a killed run (pid {scenario.a_pid})" not in scenario.c_log
    assert scenario.a_locks and set(scenario.a_locks) <= set(scenario.locks_while_c_ran), \
        "C removed the locks of the live run A"
    assert scenario.c_status == 0, scenario.c_log[-4000:]
    assert scenario.a_status == 0


@pytest.mark.slow
def test_a_second_run_of_a_live_experiment_is_refused_in_the_same_checkout(scenario):
    """Item 3: D (same checkout, same experiment as the live A) is refused, naming A, without --unlock."""
    out = text(scenario.d)
    assert scenario.d.returncode != 0
    assert f"experiment a in results is being written by another run (pid {scenario.a_pid}" in out, out[-3000:]
    assert f"kill {scenario.a_pid}" in out
    assert "--unlock" not in out.split("evomal: error:")[-1]


@pytest.mark.slow
def test_a_second_checkout_writing_the_same_results_is_refused(scenario):
    """Item 2: E, another checkout with the same absolute results_dir, is refused; nothing is duplicated."""
    from evomal.results.tracking import tracking_mismatches

    out = text(scenario.e)
    assert scenario.e.returncode != 0
    assert f"is being written by another run (pid {scenario.a_pid}" in out and str(scenario.workdir) in out, out[-3000:]
    assert not (scenario.e_workdir / "results").exists()
    results = scenario.workdir / "results"
    for name in ("a", "b"):
        problems = tracking_mismatches(f"sqlite:///{results}/mlflow.db", name, results / name)
        assert not problems, problems


@pytest.mark.slow
def test_both_experiments_are_complete_and_intact(scenario, capsys):
    assert cli.main(["check", str(scenario.workdir / "results")]) == 0
    out = capsys.readouterr().out
    assert "a: intact" in out and "b: intact" in out
    db = scenario.workdir / "results" / "mlflow.db"
    assert db.stat().st_mode & 0o777 == 0o666 & ~files._umask(), "mlflow.db is not created like other files"


# --------------------------------------------------------------------------- damage found by a plain snakemake
@dataclasses.dataclass
class Damaged:
    workdir: Path
    original: dict
    original_fitness: dict
    damaged: list[Path]
    check_before: tuple[int, str]
    run: subprocess.CompletedProcess
    untouched_before: dict
    orphans: list[Path]
    live_temp: Path


def _plant_pickle(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.unlink(missing_ok=True)
    torch.save({"weights": torch.ones(3), "curve": [], "fingerprint": "x", "payload": Payload()}, path)


@pytest.fixture(scope="module")
def damaged(scenario, tmp_path_factory) -> Damaged:
    root = tmp_path_factory.mktemp("damaged")
    workdir = root / "w"
    shutil.copytree(scenario.workdir, workdir, symlinks=True)
    exp = workdir / "results" / "a"
    original, original_fitness = contract_files(exp), candidate_fitness(exp)
    cands = sorted(exp.glob("gen_*/candidates/*"))
    assert len(cands) >= 3, cands
    garbage, deleted, planted, appended = cands[0] / "fitness.json", cands[1] / "optimized.pt", \
        cands[2] / "optimized.pt", cands[0] / "loss.json"
    garbage.write_bytes(b"\x00 garbage \xff")
    deleted.unlink()
    _plant_pickle(planted, root / "code-was-executed")
    appended.write_text(appended.read_text() + "junk\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname().split(".")[0]
    orphans = [exp / "gen_0" / f".fitness.tsv.abcd1234.{dead.pid}@{host}.tmp", exp / ".stray.tmp",
               workdir / "results" / f".mlflow.db.abcd1234.{dead.pid}@{host}.tmp"]
    live_temp = workdir / "results" / f".mlflow.db.live0000.{os.getpid()}@{host}.tmp"
    for path in orphans + [live_temp]:
        path.write_bytes(b"x" * 1000)
    capsys_free = subprocess.run([str(Path(SNAKEMAKE).parent / "evomal"), "check", "results"], cwd=workdir,
                                 capture_output=True, text=True)
    untouched = {p: p.stat().st_mtime_ns for p in [exp / "gen_0" / "fitness.tsv", exp / "best" / "loss.json",
                                                     exp / "meta_test.tsv", exp / "gen_0" / "archive.json"]}
    run = snakemake(workdir, "--config", "run=[a]", env={"EVOMAL_FAILPOINT": ""})
    return Damaged(workdir, original, original_fitness, [garbage, deleted, planted, appended],
                   (capsys_free.returncode, capsys_free.stdout), run, untouched, orphans, live_temp)


@pytest.mark.slow
def test_evomal_check_names_every_damaged_candidate_file(damaged):
    """Item 4: garbage, a deleted tensor file, a planted pickle and a changed loss file are all named."""
    status, out = damaged.check_before
    assert status == 1
    for path in damaged.damaged:
        assert str(path.relative_to(damaged.workdir)) in out, out
    assert "cannot be loaded as tensors" in out and "not valid JSON" in out and "missing" in out
    assert "b: intact" in out


@pytest.mark.slow
def test_a_plain_snakemake_recomputes_damaged_candidate_files_and_nothing_else(damaged, capsys):
    """Item 4: plain `snakemake` finds them (no "Nothing to be done"), recomputes exactly them, and leaves
    every later stage alone; the planted pickle never runs."""
    out = text(damaged.run)
    assert "Nothing to be done" not in out
    for path in damaged.damaged:
        assert f"{path.relative_to(damaged.workdir)}: " in out and "recomputing it" in out, out[-3000:]
    exp = damaged.workdir / "results" / "a"
    assert contract_files(exp) == damaged.original
    assert candidate_fitness(exp) == damaged.original_fitness
    assert {p: p.stat().st_mtime_ns for p in damaged.untouched_before} == damaged.untouched_before, \
        "a stage after the damaged files ran again"
    assert not (damaged.workdir.parent / "code-was-executed").exists()
    assert cli.main(["check", str(exp)]) == 0, capsys.readouterr().out
    again = snakemake(damaged.workdir, "--config", "run=[a]", "-n")
    assert "Nothing to be done" in text(again)


@pytest.mark.slow
def test_a_kill_leaves_no_temporary_file_that_nothing_removes(damaged):
    """Item 7: temporary files of dead writers go when a run takes the experiment; a live writer's stays."""
    assert not [p for p in damaged.orphans if p.exists()]
    assert damaged.live_temp.exists()


@pytest.mark.slow
def test_a_deleted_generation_file_is_recomputed_by_a_plain_snakemake(damaged):
    """Item 4: a deleted rule output of a finished run is made again (not "success with the file missing")."""
    exp = damaged.workdir / "results" / "a"
    for name in ("fitness.tsv", "archive.json"):
        (exp / "gen_0" / name).unlink()
    snakemake(damaged.workdir, "--config", "run=[a]", env={"EVOMAL_FAILPOINT": ""})
    assert contract_files(exp) == damaged.original


# --------------------------------------------------------------------------- configs and results folders
@pytest.mark.slow
def test_fewer_generations_than_the_results_hold_are_refused(scenario, tmp_path):
    """Item 6: after extending a run, a plain `snakemake` with the old generations is refused (before, it
    planned to recompute the final stages from fewer generations), naming the key, file and command."""
    workdir = tmp_path / "w"
    shutil.copytree(scenario.workdir, workdir, symlinks=True)
    extend = "experiments={a: {search: {generations: 2}}}"  # nested: numbers arrive as text
    # the extended search and its recorded config (the later stages would follow; not needed here)
    snakemake(workdir, "results/a/gen_1/fitness.tsv", "results/a/config.yaml", "--config", "run=[a]", extend,
              env={"EVOMAL_FAILPOINT": ""})
    assert "generations: 2" in (workdir / "results/a/config.yaml").read_text()
    plain = snakemake(workdir, "--config", "run=[a]", "-n", check=False)
    out = text(plain)
    assert plain.returncode != 0
    assert "search.generations: 2 in results/a/config.yaml" in out and "asks for 1" in out, out[-3000:]
    assert "snakemake --config 'experiments={a: {search: {generations: 2}}}'" in out
    assert "rm -r results/a/gen_1" in out
    assert snakemake(workdir, "--config", "run=[a]", extend, "-n").returncode == 0


@pytest.mark.slow
def test_another_config_under_the_same_experiment_name_is_refused(scenario, tmp_path):
    """Item 6: two configs with one experiment name writing one folder: refused with the commands to use."""
    workdir = tmp_path / "w"
    shutil.copytree(scenario.workdir, workdir, symlinks=True)
    proc = snakemake(workdir, "--config", "run=[a]", "experiments={a: {training: {lr: 0.1}}}", "-n", check=False)
    out = text(proc)
    assert proc.returncode != 0
    assert "results/a holds the results of another configuration of experiment a" in out, out[-3000:]
    assert "training.lr: 0.05 there, 0.1 in this config" in out and "mv results/a results/a.old" in out
    # a change of later stages only (meta-test settings) is not another configuration
    ok = snakemake(workdir, "--config", "run=[a]", "experiments={a: {meta_test: {steps: 80}}}", "-n")
    assert "meta_test" in text(ok)


BAD_INPUTS = {
    # name: (config change, extra files, snakemake args, text expected)
    "tournament": (lambda c: c["experiments"]["tiny"]["search"].update(tournament=9, population=8), {}, ["-n"],
                   "config key experiments.tiny.search.tournament: 9 is larger than search.population (8)"),
    "results_dir below a file": (lambda c: c.update(results_dir="notes.txt/results"), {"notes.txt": "x"}, ["-n"],
                                 "config key results_dir: notes.txt/results cannot be created, notes.txt is a file"),
    "unknown preset": (lambda c: None, {}, ["-n", "--config", "preset=no-such-preset"],
                       "config key preset: no preset 'no-such-preset'"),
    "preset with a YAML error": (lambda c: None, {"bad.yaml": "run: [x]\nexperiments: {a: [}\n"},
                                 ["-n", "--config", "preset=bad.yaml"], "preset bad.yaml line 2, column"),
    "default config with a YAML error": (lambda c: None, {"config/config.yaml": "run: [x\nfoo: bar\n"}, ["-n"],
                                         "config file config/config.yaml line "),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_any_job_naming_file_or_key(tmp_path, case):
    """Item 5: each refused at parse time with one line naming the file or key."""
    change, extra, args, expected = BAD_INPUTS[case]
    config = tiny_config(transfer=[])
    change(config)
    write_config(tmp_path, config)
    for name, content in extra.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    proc = snakemake(tmp_path, *args, check=False, timeout=120)
    out = text(proc)
    assert proc.returncode != 0
    assert expected in out, out[-3000:]
    assert "Traceback" not in out
    if case == "unknown preset":
        assert "presets: cifar10-allcnnc, " in out and "digits-mlp" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_before_any_job(tmp_path):
    """Item 5: one line naming the key; no job started, so no MLflow run is left RUNNING."""
    config = tiny_config(transfer=[])
    config["device"] = "cuda"
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, check=False, timeout=300)
    out = text(proc)
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("evomal: error:")]
    assert len(errors) == 1 and "config key device: device 'cuda' requested but CUDA is not available" in errors[0], out
    assert not (tmp_path / "results" / "mlflow.db").exists() and not (tmp_path / "results" / "tiny").exists()


@pytest.mark.slow
def test_nested_command_line_overrides_reach_the_config(tmp_path):
    """Item 6: `--config 'experiments={x: {search: {generations: 5}}}'` (values arrive as text) is accepted."""
    write_config(tmp_path, tiny_config(transfer=[]))
    proc = snakemake(tmp_path, "-n", "--quiet", "host", "--config", "experiments={tiny: {search: {generations: 5}}}",
                     check=False)
    assert proc.returncode == 0, text(proc)[-3000:]
    assert "results/tiny/gen_4/tracked.json" in text(proc)


# --------------------------------------------------------------------------- fast checks of the parts
def test_numbers_and_booleans_given_as_text_are_converted_where_the_schema_says():
    config = tiny_config(search={"generations": "5", "crossover": "0.5"}, meta_test={"seeds": ["0", "1"]})
    config["recompute"] = "true"
    resolved = resolve_config(config)
    exp = resolved["experiments"]["tiny"]
    assert exp["search"]["generations"] == 5 and exp["search"]["crossover"] == 0.5
    assert exp["meta_test"]["seeds"] == [0, 1] and resolved["recompute"] is True
    with pytest.raises(ConfigError, match="generations: 'five' is not of type 'integer'"):
        resolve_config(tiny_config(search={"generations": "five"}))
    # a string key keeps its text
    assert resolve_config({**tiny_config(), "results_dir": "2024"})["results_dir"] == "2024"


def test_a_yaml_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("run: [a]\nexperiments:\n  a: {dataset: digits\n")
    with pytest.raises(ConfigError, match=rf"{path} line \d+, column \d+: not valid YAML"):
        presets.read_yaml_file(path, what="preset")


def test_every_preset_is_found_by_name():
    names = presets.list_presets()
    assert "digits-mlp" in names and "mnist1d-mlp" in names
    assert all(presets.preset_path(n).is_file() for n in names)


def test_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname().split(".")[0]
    gone = tmp_path / "gen_0" / f".fitness.json.x1.{dead.pid}@{host}.tmp"
    alive = tmp_path / f".a.json.x2.{os.getpid()}@{host}.tmp"
    elsewhere = tmp_path / f".a.json.x3.{dead.pid}@another-machine.tmp"
    unnamed = tmp_path / ".a.json.x4.tmp"
    for path in (gone, alive, elsewhere, unnamed):
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    assert files.remove_orphans(tmp_path) == [gone]
    assert files.remove_orphans(tmp_path, unnamed=True) == [unnamed]
    assert alive.exists() and elsewhere.exists()
    # a writer's own temporary file is named after it (and so is never removed while it lives)
    fd, tmp = files.make_temp(tmp_path / "result.json")
    os.close(fd)
    assert Path(tmp).name.endswith(f".{os.getpid()}@{host}.tmp") and files.remove_orphans(tmp_path) == []


def test_config_conflicts_tolerate_keys_added_since_a_run(tmp_path):
    """A recorded config without a key added later (it takes its default) is not another configuration."""
    import yaml

    cfg = resolve_config({**tiny_config(), "results_dir": str(tmp_path)})
    exp = copy.deepcopy(cfg["experiments"]["tiny"])
    exp.pop("selection")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.yaml").write_text(yaml.safe_dump({"experiment": "tiny", "device": "cpu", **exp}))
    assert preflight.config_conflicts(cfg, ["tiny"]) == []
    exp["seed"] = 7
    (tmp_path / "tiny" / "config.yaml").write_text(yaml.safe_dump({"experiment": "tiny", **exp}))
    assert "seed: 7 there, 0 in this config" in preflight.config_conflicts(cfg, ["tiny"])[0]


def test_evomal_check_refuses_a_path_that_is_no_results_folder(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "nowhere")]) == 1
    assert f"no such results folder: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    assert cli.main(["check", str(tmp_path)]) == 1
    assert "no experiment folders in" in capsys.readouterr().err
