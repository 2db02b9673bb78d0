"""How Snakemake schedules the jobs: the search's chain before its bookkeeping before the test runs
(evomal.pipeline.contract's priorities), and the end of a run does not wait for Snakemake's scheduler
timers (evomal.pipeline.scheduler)."""
from __future__ import annotations

import threading

from snakemake.scheduling import job_scheduler

from evomal.pipeline.contract import BOOKKEEPING_PRIORITY, SEARCH_PRIORITY
from evomal.pipeline.scheduler import REEVALUATION, cancel_scheduler_timers
from workflow_utils import dry_run_jobs, snakemake, tiny_config, write_config

#: the search's chain: what the learned arms wait for
SEARCH = {"experiment_config", "population", "filter", "compile", "optimize", "evaluate", "gather",
          "finalist_scores", "finalists", "best"}
#: what only reads the search's files: it must not hold a core the next stage of the search needs
BOOKKEEPING = {"tracking_init", "track", "check_generation", "track_results", "plot_search", "plot_loss_shape",
               "plot_meta_test_curves", "plot_transfer_curves", "export_loss", "report", "meta_test", "transfer"}


def test_the_search_comes_before_its_bookkeeping_and_the_bookkeeping_before_the_test_runs(tmp_path):
    """Every job of a run in its tier: a bookkeeping job queued ahead of the next generation's breeding
    held the free core for two seconds a generation (track, MLflow), and a new rule must choose a tier."""
    write_config(tmp_path, tiny_config())
    snakemake(tmp_path, "results/tiny/gen_0/filter.json")  # past the first checkpoint: its shard jobs exist
    dry = snakemake(tmp_path, "-n", "--quiet", "host")
    prio = {rule: {p for _, p in jobs} for rule, jobs in dry_run_jobs(dry.stdout + dry.stderr).items()}
    prio.pop("all")
    assert {"compile", "optimize", "evaluate", "track", "report", "test_run"} <= set(prio), sorted(prio)
    assert set(prio) <= SEARCH | BOOKKEEPING | {"test_run"}, sorted(set(prio) - SEARCH - BOOKKEEPING)
    assert {p for rule in SEARCH & set(prio) for p in prio[rule]} == {SEARCH_PRIORITY}
    assert {p for rule in BOOKKEEPING & set(prio) for p in prio[rule]} == {BOOKKEEPING_PRIORITY}
    assert all(0 < p < BOOKKEEPING_PRIORITY < SEARCH_PRIORITY for p in prio["test_run"])


class JobScheduler:  # named as Snakemake's: its timers call a lambda defined in this method
    def _schedule_reevalutation(self, delay: float) -> threading.Timer:
        timer = threading.Timer(delay, lambda: None)
        timer.start()
        return timer


def test_only_the_schedulers_pending_timers_are_cancelled():
    ours = [JobScheduler()._schedule_reevalutation(60) for _ in range(2)]
    other = threading.Timer(60, print)
    other.start()
    try:
        assert cancel_scheduler_timers() == 2
        for t in ours:
            t.join(timeout=30)  # a cancelled timer ends at once; a live one would wait its 60 s
            assert not t.is_alive()
        assert other.is_alive()
    finally:
        other.cancel()


def test_snakemake_still_starts_its_timers_where_we_look_for_them():
    """An upgrade that renames the method would leave the timers alone again: this test says so."""
    scheduler = getattr(job_scheduler, REEVALUATION.split(".")[0])
    assert callable(getattr(scheduler, REEVALUATION.split(".")[1]))
