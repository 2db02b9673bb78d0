"""The end of a run does not wait for Snakemake's scheduler timers (evomal.pipeline.scheduler)."""
from __future__ import annotations

import threading

from snakemake.scheduling import job_scheduler

from evomal.pipeline.scheduler import REEVALUATION, cancel_scheduler_timers


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
