"""What a person reads while a run goes on (evomal.pipeline.progress) and at its end (the verdict,
evomal.results.report.verdict)."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from evomal.core import files
from evomal.pipeline import progress
from evomal.pipeline.locks import OWNER_FILE, record_lock_owner
from evomal.results.report.verdict import Verdict, experiment_verdicts, run_summary, verdicts


# --------------------------------------------------------------------------- progress lines
def test_durations_read_like_a_clock():
    assert [progress.duration(s) for s in (0.42, 42, 185, 7620, None, -1)] == \
        ["0.4s", "42s", "3m05s", "2h07m", "-", "-"]


def test_eta_extrapolates_the_generations_of_this_run(tmp_path):
    exp = tmp_path / "results" / "e"
    started = 1_000_000.0
    for g, finished in enumerate([started - 500, started + 60, started + 120]):  # gen_0 is from an earlier run
        path = exp / f"gen_{g}" / "fitness.tsv"
        path.parent.mkdir(parents=True)
        path.write_text("id\n")
        os.utime(path, (finished, finished))
    # two generations in 120 s of this run: 60 s each, 7 of 10 to go
    assert progress.search_eta(exp, 2, 10, started, now=started + 120) == pytest.approx(420.0)
    assert progress.search_eta(exp, 2, 3, started, now=started + 120) == 0.0
    assert progress.search_eta(exp, 0, 10, started + 1000, now=started + 1100) is None  # none done in this run


def test_generation_line_counts_from_one_and_times_from_the_run_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs = dict(generation=0, generations=4, best=0.041666, expression="mul(-1, mul(y, log(f)))", evaluated=7,
                  population=12, exp_dir=tmp_path / "results" / "e")
    assert progress.generation_line(**kwargs) == \
        "gen 1/4  best 0.04167 mul(-1, mul(y, log(f)))  evaluated 7/12"  # outside a Snakemake run: no times
    held = record_lock_owner([], tmp_path)  # the record the Snakefile's onstart writes, naming this process
    try:
        line = progress.generation_line(**kwargs)
        assert re.fullmatch(r"gen 1/4  best 0\.04167 mul\(-1, mul\(y, log\(f\)\)\)  evaluated 7/12  elapsed \S+  ETA -",
                            line), line
        assert progress.generation_line(**{**kwargs, "best": None}).startswith("gen 1/4  best none yet  evaluated 7/12")
    finally:
        held.release()


def test_a_finished_runs_record_dates_no_line(tmp_path):
    """The lock-owner record outlives its run: once its process is gone, a line made in that folder (a
    test, `evomal show`, the next run's parse) is outside a run and carries no elapsed time."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    record = {"pid": int(ended.stdout), "host": socket.gethostname(), "started": 1.0}
    (tmp_path / ".snakemake").mkdir()
    (tmp_path / ".snakemake" / OWNER_FILE).write_text(json.dumps(record))
    assert progress.run_started(tmp_path) is None
    line = progress.seed_line(target="digits/mlp", method="evomal", seed=3, done=4, total=10, metric="error_rate",
                              value=0.06125, seconds=3.2, workdir=tmp_path)
    assert line == "digits/mlp 4/10  evomal seed 3  test error rate 0.06125  (3.2s)"
    (tmp_path / ".snakemake" / OWNER_FILE).write_text(json.dumps({**record, "pid": os.getpid()}))
    assert progress.run_started(tmp_path) == 1.0


def test_a_finished_run_line_names_the_metric_in_words(tmp_path):
    line = progress.seed_line(target="digits/mlp", method="evomal", seed=3, done=4, total=10, metric="error_rate",
                              value=0.06125, seconds=3.2, workdir=tmp_path)
    assert line == "digits/mlp 4/10  evomal seed 3  test error rate 0.06125  (3.2s)"
    assert progress.metric_words("mse") == "MSE"


def _record(message: str, event=None) -> logging.LogRecord:
    record = logging.LogRecord("snakemake.logging", logging.INFO, __file__, 1, message, None, None)
    if event is not None:
        record.event = event
    return record


def test_snakemakes_per_job_lines_are_hidden_only_when_rules_are_quiet():
    from snakemake.logging import LogEvent
    from snakemake.settings.enums import Quietness

    logger = logging.getLogger("snakemake.logging")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        assert not progress.quiet_scheduler(SimpleNamespace(output_settings=SimpleNamespace(quiet={Quietness.HOST})))
        assert not handler.filters
        assert progress.quiet_scheduler(SimpleNamespace(output_settings=SimpleNamespace(quiet={Quietness.RULES})))
        shown = [r.getMessage() for r in (
            _record("Select jobs to execute..."), _record("Execute 2 jobs...", LogEvent.JOB_STARTED),
            _record("3 of 40 steps (8%) done", LogEvent.PROGRESS), _record("Finished jobid: 4", LogEvent.JOB_FINISHED),
            _record("Job stats:", LogEvent.RUN_INFO), _record("Error in rule gather:", LogEvent.JOB_ERROR),
            _record("gen 1/4  best 0.1")) if handler.filter(r)]
        assert shown == ["Job stats:", "Error in rule gather:", "gen 1/4  best 0.1"]
    finally:
        logger.removeHandler(handler)


def test_a_failed_jobs_error_block_stays_visible_when_the_job_blocks_are_hidden():
    """`--quiet rules` alone would also hide "Error in rule ..." and its log path (on SLURM the only
    pointer to the job's log): Snakemake's own filter is relaxed, ours drops just the job blocks."""
    from snakemake.logging import DefaultFilter, LogEvent
    from snakemake.settings.enums import Quietness

    logger = logging.getLogger("snakemake.logging")
    handler = logging.StreamHandler()
    handler.addFilter(DefaultFilter({Quietness.RULES}, debug_dag=False, verbose=False, dryrun=False,
                                    printshellcmds=False))
    logger.addHandler(handler)
    try:
        assert progress.quiet_scheduler(SimpleNamespace(output_settings=SimpleNamespace(quiet={Quietness.RULES})))
        shown = [r.getMessage() for r in (_record("rule filter:", LogEvent.JOB_INFO),
                                          _record("Error in rule filter:", LogEvent.JOB_ERROR)) if handler.filter(r)]
        assert shown == ["Error in rule filter:"]
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------- the verdict
@pytest.mark.parametrize("mean, base, p, diverged, n, word", [
    (0.05, 0.06, 0.01, 0, 5, "better than"),
    (0.07, 0.06, 0.01, 0, 5, "worse than"),
    (0.05, 0.06, 0.20, 0, 5, "not significantly different from"),
    (0.05, 0.06, math.nan, 0, 1, "not significantly different from"),
    (math.inf, 0.06, math.nan, 2, 5, "worse than"),
    (0.05, 0.06, 0.0, 0, 3, "better than"),  # the same difference on every seed
])
def test_the_verdict_in_words(mean, base, p, diverged, n, word):
    v = Verdict("digits/mlp", "evomal", "error_rate", n, mean, base, p, diverged)
    assert v.word == word
    text = v.sentence()
    assert text.startswith(f"the learned loss (evomal) is {word} cross-entropy on test, ")
    assert ("no test with one seed" in text) == (n == 1) and ("diverged on 2" in text) == bool(diverged)
    assert Verdict("d/m", "evomal", "mse", n, mean, base, p).sentence().split(" on ")[0].endswith(" MSE")


def _write_stage(exp_dir, stage, rows):
    from evomal.learning.statistics import summarize

    per_seed = pd.DataFrame(rows, columns=["target", "method", "seed", "test_metric", "metric", "diverged", "reason"])
    files.write_tsv(exp_dir / f"{stage}.tsv", per_seed)
    files.write_tsv(exp_dir / f"{stage}_summary.tsv", summarize(per_seed))


def test_run_summary_gives_each_experiment_its_verdict_and_the_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "results" / "e"
    exp.mkdir(parents=True)
    rows = []
    for seed in range(5):  # the learned loss is better on every seed; the reference is no learned loss
        rows += [("d/mlp", "baseline", seed, 0.10 + 0.01 * seed, "error_rate", False, ""),
                 ("d/mlp", "label_smoothing", seed, 0.09, "error_rate", False, ""),
                 ("d/mlp", "evomal", seed, 0.05 + 0.012 * seed, "error_rate", False, "")]
    _write_stage(exp, "meta_test", rows)
    summary = files.read_tsv(exp / "meta_test_summary.tsv")
    assert [v.method for v in verdicts(summary, None, exclude=["label_smoothing"])] == ["evomal"]
    lines = experiment_verdicts(exp, {"meta_test": {"references": ["label_smoothing"]}})
    assert len(lines) == 1 and lines[0].startswith("The learned loss (evomal) is better than cross-entropy on test, p = ")
    config = {"run": ["e", "f"], "results_dir": "results",
              "experiments": {"e": {"meta_test": {"references": ["label_smoothing"]}}, "f": {}}}
    files.write_json(exp / "tracking" / "run.json", {"configured_uri": "sqlite:///results/mlflow.db",
                                                     "candidates_view": "http://127.0.0.1:5000/#/experiments/3/runs"})
    text = run_summary(config)
    assert text.splitlines()[0] == "e: " + lines[0]
    assert "evomal show results/e" in text and "ui --backend-store-uri sqlite:///results/mlflow.db, then open " \
        "http://127.0.0.1:5000/#/experiments/3/runs" in text
    assert "f: no meta-test results yet" in text
