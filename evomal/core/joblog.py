"""A per-job log file (Snakemake's ``log:``), safe when several jobs run as threads of one process."""
from __future__ import annotations

import sys
import time
from pathlib import Path


class JobLog:
    def __init__(self, path: str | None, *, echo: bool = False, prefix: str = ""):
        self.path = Path(path) if path else None
        self.echo = echo
        self.prefix = prefix
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def __call__(self, message: str, *, echo: bool | None = None) -> None:
        line = f"{time.strftime('%H:%M:%S')} {self.prefix}{message}"
        if self.path:
            with self.path.open("a") as fh:
                fh.write(line + "\n")
        if self.echo if echo is None else echo:
            print(f"{self.prefix}{message}", file=sys.stderr, flush=True)
