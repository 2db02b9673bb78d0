"""The end of a run: no wait for Snakemake's scheduler timers.

Snakemake caps job submissions per timespan (``--max-jobs-per-timespan``, default 100 per second), and
after every scheduling round it starts a timer thread that wakes the scheduler once that timespan has
passed. The thread is not a daemon, so the process waits for the last one before it exits: every run
ended up to a second after its last job. Once ``onsuccess`` or ``onerror`` runs, the scheduler has
returned and nothing is left for such a timer to wake.
"""
from __future__ import annotations

import threading

#: what Snakemake's re-evaluation timers call (snakemake.scheduling.job_scheduler)
REEVALUATION = "JobScheduler._schedule_reevalutation"


def cancel_scheduler_timers() -> int:
    """Cancel the pending re-evaluation timers of Snakemake's scheduler (call when it has returned, as
    in ``onsuccess``); other timers are left alone. Returns how many it cancelled."""
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()
              and REEVALUATION in getattr(t.function, "__qualname__", "")]
    for t in timers:
        t.cancel()
    return len(timers)
