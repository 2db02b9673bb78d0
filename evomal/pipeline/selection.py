"""Selecting the result of a search: the best loss with its meta-learned weights."""
from __future__ import annotations

import time
from pathlib import Path

from evomal.core import files
from evomal.core.files import record_seconds
from evomal.core.joblog import JobLog
from evomal.gp.expressions import parse
from evomal.pipeline.contract import candidate_dir
from evomal.pipeline.faults import failpoint


def select_best(archive_path, results_dir, out_path, *, exp: dict, log: str | None = None) -> None:
    """The best evaluated loss of the whole search, with its meta-learned weights."""
    from evomal.losses.lossfile import save_loss

    t0 = time.perf_counter()
    archive = files.read_json(archive_path)
    best = archive.get("best")
    if best is None:
        raise RuntimeError(f"{archive_path}: no candidate of the search reached a finite fitness; "
                           "nothing to meta-test (see the generations' fitness.tsv for the reasons)")
    cdir = candidate_dir(Path(results_dir) / f"gen_{best['generation']}", best["id"])
    kind = files.read_json(cdir / "loss.json")["kind"]
    opt = files.read_tensors(cdir / "optimized.pt")
    failpoint("best")
    save_loss(out_path, parse(best["expression"]), kind, opt["weights"], id=best["id"],
              generation=best["generation"], fitness=files.number(best["fitness"]), method=exp["method"])
    record_seconds(out_path, "best", time.perf_counter() - t0)
    JobLog(log, echo=True)(f"best loss {best['id']} (fitness {best['fitness']}): {best['expression']}")
