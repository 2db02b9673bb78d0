"""Verifying a results folder against the file contract (DESIGN §3): ``evomal check`` and the check job.

Two depths. The *quick* check needs neither torch nor pandas, so it runs while Snakemake builds its DAG
(the input function of the ``check_generation`` rule): every candidate file of a gathered generation
must still have the digest that the generation's check job recorded in ``checks/gen_<g>.json`` once
it had verified it, so a changed, deleted or planted file is found without reading it. The *deep* check reads
every file as its readers do: JSON and tables parse and have their fields, tensors load weights-only,
the fingerprints of ``loss.json`` and ``optimized.pt`` match their inputs (as the compile and optimize
stages compute them, evomal.pipeline.candidates), and each ``fitness.json`` agrees with the generation's
``fitness.tsv``. A ``fitness.json`` fingerprint is not recomputed: with early stopping it depends on the
shard's earlier candidates; the digests bind it to the exact files it was computed from instead.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from evomal.core import files
from evomal.pipeline.contract import (ARCHIVE, BEST_LOSS, BEST_SOURCE, CANDIDATES, CONFIG_FILE, FILTER,
                                      FINALIST_COLUMNS, FINALISTS, FITNESS_FILE, FITNESS_TABLE, LOSS_FILE, META_TEST,
                                      META_TEST_SUMMARY, OPTIMIZED_FILE, PER_SEED_COLUMNS, POPULATION, TABLE_COLUMNS,
                                      TRANSFER, TRANSFER_SUMMARY, candidate_dir, check_record)

CANDIDATE_FILES = (LOSS_FILE, OPTIMIZED_FILE, FITNESS_FILE)


@dataclasses.dataclass(frozen=True)
class Damage:
    """One file that is missing or damaged, and what is wrong with it."""
    path: Path
    problem: str

    @property
    def per_candidate(self) -> bool:
        return len(self.path.parts) >= 3 and self.path.parts[-3] == CANDIDATES

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class Findings(list):
    """The damage found (a list of Damage), and how many files were read to find it."""
    checked = 0


def _read(reader, path: Path, out: Findings):
    """``reader(path)``, or None with the damage recorded (missing, or how it is damaged)."""
    out.checked += 1
    if not path.exists():
        out.append(Damage(path, "missing"))
        return None
    try:
        return reader(path)
    except (files.ResultFileError, ValueError, OSError, SyntaxError) as exc:
        # the readers' messages start with the path and end with a repair hint; keep what is wrong
        text = str(exc).split("; to repair it")[0].splitlines()[0]
        text = text.split(f"{path}: ", 1)[-1]
        out.append(Damage(path, text if len(text) <= 240 else text[:237] + "..."))
        return None


def _mapping(reader):
    """A reader that also refuses a document that is not a JSON object (a list, a number...)."""
    def read(path):
        doc = reader(path)
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: not a JSON object of the expected fields")
        return doc
    return read


def evaluated(filter_doc: dict) -> list[dict]:
    """The candidates of a filter.json that have per-candidate files."""
    return [c for c in filter_doc.get("candidates", []) if c.get("decision") == "evaluate"]


def candidate_files(gen_dir: Path, filter_doc: dict) -> list[Path]:
    return [candidate_dir(gen_dir, c["id"]) / name for c in evaluated(filter_doc) for name in CANDIDATE_FILES]


# --------------------------------------------------------------------------- quick (DAG time)
def _record(gen_dir: Path) -> Path:
    return check_record(gen_dir.parent, int(gen_dir.name.split("_")[-1]))


def quick_check(gen_dir: str | Path) -> list[Damage]:
    """Candidate files of a verified generation that changed since, or vanished (no torch, no pandas)."""
    gen_dir = Path(gen_dir)
    out = Findings()
    doc = _read(_mapping(files.read_json), _record(gen_dir), out)
    if doc is None or not isinstance(doc.get("digests"), dict):
        return out or [Damage(_record(gen_dir), "has no digests")]
    for rel, digest in doc["digests"].items():
        path = gen_dir / rel
        if not path.is_file():
            out.append(Damage(path, "missing"))
        elif files.file_digest(path) != digest:
            out.append(Damage(path, f"changed since its generation was verified ({_record(gen_dir)})"))
    return out


def recheck_if_damaged(gen_dir: str | Path) -> list[Damage]:
    """At DAG time: if a verified generation's candidate files changed, delete its check record so that
    its check job runs again, verifies every file and recomputes the damaged ones."""
    gen_dir = Path(gen_dir)
    if not _record(gen_dir).exists():
        return []  # never verified yet: its check job is to run anyway
    damage = quick_check(gen_dir)
    if damage:
        _record(gen_dir).unlink(missing_ok=True)
    return damage


def digests(gen_dir: Path, filter_doc: dict) -> dict[str, str]:
    return {str(p.relative_to(gen_dir)): files.file_digest(p) for p in candidate_files(gen_dir, filter_doc)
            if p.is_file()}


# --------------------------------------------------------------------------- deep
def _table_fitness(path: Path, out: Findings) -> dict[str, float] | None:
    frame = _read(files.read_tsv, path, out)
    if frame is None:
        return None
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        out.append(Damage(path, f"lacks the columns {', '.join(missing)}"))
        return None
    return {str(i): float(f) for i, f in zip(frame["id"], frame["fitness"])}


def check_candidate(gen_dir: Path, rec: dict, exp: dict, table: dict[str, float] | None, out: Findings) -> None:
    """Every file of one evaluated candidate, read as the stages read it."""
    from evomal.pipeline.candidates import loss_fingerprint, optimized_fingerprint

    cdir = candidate_dir(gen_dir, rec["id"])
    loss = _read(_mapping(files.read_json), cdir / LOSS_FILE, out)
    if loss is not None and loss.get("fingerprint") != loss_fingerprint(rec, exp):
        out.append(Damage(cdir / LOSS_FILE, "its fingerprint does not match its inputs (expression, method, seed)"))
    opt = _read(_mapping(files.read_tensors), cdir / OPTIMIZED_FILE, out)
    if opt is not None and loss is not None and opt.get("fingerprint") != optimized_fingerprint(cdir, exp):
        out.append(Damage(cdir / OPTIMIZED_FILE, "its fingerprint does not match its inputs (loss.json, "
                                                 "local_search and training settings)"))
    fit = _read(_mapping(files.read_json), cdir / FITNESS_FILE, out)
    if fit is not None:
        try:
            value = files.number(fit["fitness"])
            fit["fingerprint"]
        except (KeyError, TypeError, ValueError) as exc:
            out.append(Damage(cdir / FITNESS_FILE, f"not a fitness record ({type(exc).__name__}: {exc})"))
        else:
            recorded = None if table is None else table.get(rec["id"])
            if recorded is not None and not math.isclose(value, recorded, rel_tol=1e-9):
                out.append(Damage(cdir / FITNESS_FILE, f"fitness {value} disagrees with {FITNESS_TABLE} ({recorded})"))


def check_generation(gen_dir: str | Path, exp: dict, out: Findings | None = None) -> Findings:
    """Every file of a gathered generation (the deep check)."""
    gen_dir = Path(gen_dir)
    out = Findings() if out is None else out
    population = _read(_mapping(files.read_json), gen_dir / POPULATION, out)
    if population is not None and not isinstance(population.get("individuals"), list):
        out.append(Damage(gen_dir / POPULATION, "has no list of individuals"))
    flt = _read(_mapping(files.read_json), gen_dir / FILTER, out)
    table = _table_fitness(gen_dir / FITNESS_TABLE, out)
    _read(_mapping(files.read_json), gen_dir / ARCHIVE, out)
    if flt is None:
        return out
    try:
        ids = {c["id"] for c in flt["candidates"]}
        records = evaluated(flt)
    except (KeyError, TypeError, AttributeError) as exc:
        out.append(Damage(gen_dir / FILTER, f"not a filter record ({type(exc).__name__}: {exc})"))
        return out
    if table is not None and set(table) != ids:
        out.append(Damage(gen_dir / FITNESS_TABLE, f"its candidates differ from those of {FILTER}"))
    for rec in records:
        check_candidate(gen_dir, rec, exp, table, out)
    return out


def _columns(path: Path, columns: list[str], out: Findings) -> None:
    frame = _read(files.read_tsv, path, out)
    if frame is not None and (missing := [c for c in columns if c not in frame.columns]):
        out.append(Damage(path, f"lacks the columns {', '.join(missing)}"))


def _yaml(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(doc, dict):
        raise ValueError("not a mapping of config keys")
    return doc


def check_experiment(exp_dir: str | Path) -> Findings:
    """Every file of an experiment folder, against the config it recorded (``config.yaml``)."""
    from evomal.methods.registry import method_generations

    exp_dir = Path(exp_dir)
    out = Findings()
    config = _read(_yaml, exp_dir / CONFIG_FILE, out)
    if config is None:
        return out
    exp = {k: v for k, v in config.items() if k not in ("experiment", "device", "shards", "tracking_uri")}
    if method_generations(exp.get("method", "evomal")):
        for gen in sorted((p for p in exp_dir.glob("gen_*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:])):
            if (gen / FITNESS_TABLE).exists() or _record(gen).exists():  # gathered (or meant to be)
                check_generation(gen, exp, out)
    for name, columns in ((META_TEST, PER_SEED_COLUMNS), (TRANSFER, PER_SEED_COLUMNS), (META_TEST_SUMMARY, []),
                          (TRANSFER_SUMMARY, []), (FINALISTS, FINALIST_COLUMNS)):
        if (exp_dir / name).exists():
            _columns(exp_dir / name, columns, out)
    if (exp_dir / BEST_LOSS).exists():
        from evomal.losses.lossfile import load_loss

        _read(load_loss, exp_dir / BEST_LOSS, out)
    if (exp_dir / BEST_SOURCE).exists():  # compiled, never run: a syntax check
        _read(lambda p: compile(p.read_text(), str(p), "exec"), exp_dir / BEST_SOURCE, out)
    return out


def is_experiment(path: Path) -> bool:
    return path.is_dir() and ((path / CONFIG_FILE).exists() or any(path.glob("gen_*")))


def check_results(path: str | Path) -> dict[str, Findings]:
    """``evomal check``: one experiment folder, or every experiment under a results folder."""
    path = Path(path)
    folders = [path] if is_experiment(path) else sorted(p for p in path.iterdir() if is_experiment(p))
    return {p.name: check_experiment(p) for p in folders}



def report_text(results: dict[str, Findings]) -> tuple[str, bool]:
    """What ``evomal check`` prints, and whether everything is intact."""
    lines, intact = [], True
    for name, damage in results.items():
        checked = damage.checked
        if not damage:
            lines.append(f"{name}: intact ({checked} files checked)")
            continue
        intact = False
        lines.append(f"{name}: {len(damage)} of {checked} files damaged or missing:")
        lines += [f"  {d}" for d in damage]
    if not intact:
        lines.append("to repair: `snakemake` recomputes damaged or missing candidate files (their generation's check "
                     "job) and missing files of the other stages; delete any other damaged file first, then run it")
    return "\n".join(lines), intact
