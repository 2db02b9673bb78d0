"""What early stopping compares a candidate with (evomal.learning.early_stop): the checkpoint metrics of
the candidates that earlier generations scored, read from their fitness.json files via the archive."""
from __future__ import annotations

from pathlib import Path

from evomal.core import files
from evomal.learning.early_stop import EarlyStop, ScoreBoard
from evomal.pipeline.contract import FITNESS_FILE, candidate_dir, generation_dir


def early_stop_board(exp: dict, steps: int, archive=None) -> ScoreBoard | None:
    """The score board of an evaluate job, or None when early stopping is off (the default).

    ``archive``: the previous generation's archive.json (None in generation 0); every evaluated entry's
    checkpoint metrics join the board, in archive order. Entries scored while early stopping was off
    have none.
    """
    rule = EarlyStop.from_config(exp.get("early_stop"))
    if rule is None:
        return None
    board = ScoreBoard(rule, steps)
    if archive is not None:
        exp_dir = Path(archive).parent.parent
        for entry in files.read_json(archive)["entries"]:
            if entry["decision"] == "evaluate":
                path = candidate_dir(generation_dir(exp_dir, entry["generation"]), entry["id"]) / FITNESS_FILE
                board.add(files.read_json(path).get("checkpoints", []))
    return board
