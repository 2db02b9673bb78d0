"""What a person reads while a run goes on: one line per generation and per meta-test seed.

Elapsed time counts from the start of the Snakemake run (the lock-owner record its ``onstart`` writes,
evomal.pipeline.locks), so it means the same in every job of the run, whether jobs are threads of the
Snakemake process or processes of their own. The ETA of a search extrapolates the generations this run
has finished (their ``fitness.tsv`` is newer than the run's start) to the generations still to come.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from evomal.core.files import pid_alive
from evomal.pipeline.contract import FITNESS_TABLE, generation_dir
from evomal.pipeline.locks import OWNER_FILE

#: metric names of the result tables (column ``metric``) as words, for people
METRIC_WORDS = {"error_rate": "error rate", "mse": "MSE"}


def metric_words(name: str) -> str:
    return METRIC_WORDS.get(name, str(name).replace("_", " "))


def run_started(workdir: str | Path = ".") -> float | None:
    """Wall-clock time the current Snakemake run started, or None outside a run.

    The record outlives its run (a finished or killed run leaves it until the next one starts), so it
    dates a run only while the process it names lives; one from another machine (a cluster job reading
    the submit host's record) is taken as it is."""
    try:
        record = json.loads((Path(workdir) / ".snakemake" / OWNER_FILE).read_text())
        pid, host, started = int(record["pid"]), record["host"], float(record["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return started if host != socket.gethostname() or pid_alive(pid) else None


def duration(seconds: float | None) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``2h07m``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def search_eta(exp_dir: str | Path, generation: int, generations: int, started: float,
               now: float | None = None) -> float | None:
    """Seconds until the last generation is gathered, at the pace of this run's generations so far."""
    now = time.time() if now is None else now
    done_here = 0
    for g in range(generation + 1):
        try:
            if (generation_dir(exp_dir, g) / FITNESS_TABLE).stat().st_mtime >= started:
                done_here += 1
        except OSError:
            pass
    if done_here == 0:
        return None
    return (now - started) / done_here * max(generations - 1 - generation, 0)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def generation_line(*, generation: int, generations: int | None, best: float | None, expression: str | None,
                    evaluated: int, population: int, exp_dir: str | Path, workdir: str | Path = ".") -> str:
    """``gen 3/4  best 0.0417 mul(-1, mul(y, log(f)))  evaluated 7/12  elapsed 1m32s  ETA 31s``.

    ``gen`` counts from 1 (the folder of generation 3 of 4 is gen_2); ``best`` is the best fitness so far.
    """
    total = "?" if generations is None else str(generations)
    best_text = "none yet" if best is None else f"{best:.4g} {_clip(expression or '-', 60)}"
    line = f"gen {generation + 1}/{total}  best {best_text}  evaluated {evaluated}/{population}"
    started = run_started(workdir)
    if started is not None:
        line += f"  elapsed {duration(time.time() - started)}"
        if generations is not None:
            line += f"  ETA {duration(search_eta(exp_dir, generation, generations, started))}"
    return line


def seed_line(*, target: str, method: str, seed: int, done: int, total: int, metric: str, value: float,
              seconds: float, workdir: str | Path = ".") -> str:
    """``digits/mlp 3/10  evomal seed 1  test error rate 0.0612  (4s, elapsed 1m02s)``: one finished run."""
    started = run_started(workdir)
    when = duration(seconds) + ("" if started is None else f", elapsed {duration(time.time() - started)}")
    return f"{target} {done}/{total}  {method} seed {seed}  test {metric_words(metric)} {value:.4g}  ({when})"


# --------------------------------------------------------------------------- Snakemake's own output
#: lines that Snakemake prints for every job and that no ``--quiet`` choice hides without hiding the
#: job table of a dry run too (Snakemake 9): dropped from the terminal only, the log file under
#: .snakemake/log keeps them
SCHEDULER_LINES = ("Select jobs to execute...",)


class _PerJobLines:
    def filter(self, record) -> bool:
        from snakemake.logging import LogEvent
        from snakemake.settings.enums import Quietness

        # the per-job blocks (what `--quiet rules` hides), "Execute N jobs...", "Finished jobid ...",
        # "N of M steps (x%) done" (a checkpoint adds jobs, so that share even goes backwards); a failed
        # job's "Error in rule ..." block with its log path stays (`--quiet rules` would hide it too)
        if getattr(record, "event", None) in (LogEvent.JOB_INFO, LogEvent.GROUP_INFO, LogEvent.SHELLCMD,
                                              LogEvent.JOB_STARTED, LogEvent.JOB_FINISHED, LogEvent.PROGRESS):
            return False
        if getattr(record, "quietness", None) == Quietness.RULES:
            return False
        return record.getMessage() not in SCHEDULER_LINES


def quiet_scheduler(workflow) -> bool:
    """With ``--quiet rules`` (the default profile), also hide Snakemake's per-job progress lines in the
    terminal, so that the project's own lines are what a person reads; a dry run still prints its job
    table. Returns whether it did. ``--quiet host`` (or no ``--quiet``) keeps all of Snakemake's output."""
    import logging

    from snakemake.settings.enums import Quietness

    quiet = getattr(getattr(workflow, "output_settings", None), "quiet", None) or set()
    if Quietness.RULES not in quiet:
        return False
    from snakemake.logging import DefaultFilter

    done = False
    for handler in logging.getLogger("snakemake.logging").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            for f in handler.filters:  # Snakemake's own filter: let job errors through, _PerJobLines
                if isinstance(f, DefaultFilter):  # drops what `rules` hid apart from them
                    f.quiet = set(f.quiet) - {Quietness.RULES}
            handler.addFilter(_PerJobLines())
            done = True
    return done
