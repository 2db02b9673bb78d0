"""The ``evomal`` command.

``evomal show`` lists the experiments of a results folder with their status; ``evomal show
results/<experiment>`` prints the best loss, the meta-test (and transfer) table and the filter savings.
Subcommands register in :func:`build_parser`; each is a function ``(args) -> exit status``.
Expected failures (missing or damaged files, a wrong path) end with a one-line message and status 1.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from evomal.core import files
from evomal.methods.registry import method_generations, method_searches

DEFAULT_RESULTS = "results"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# --------------------------------------------------------------------------- reading an experiment folder
def is_experiment_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in
                                 ("config.yaml", "gen_0", "meta_test.tsv", "best/loss.json"))


def _config(exp_dir: Path) -> dict:
    from evomal.results.report import _read_yaml

    return _read_yaml(exp_dir / "config.yaml") if (exp_dir / "config.yaml").exists() else {}


def _best_fitness(exp_dir: Path, tables: list[Path]) -> float | None:
    """The best loss's fitness once selected, else the best finite fitness of the generations so far."""
    from evomal.results.report import read_generations

    if (exp_dir / "best" / "loss.json").exists():
        value = files.read_json(exp_dir / "best" / "loss.json").get("fitness")
        if value is not None:
            return files.number(value)
    if not tables:
        return None
    fit = read_generations(tables)["fitness"]
    fit = fit[fit.map(math.isfinite)]
    return float(fit.min()) if len(fit) else None


def experiment_status(exp_dir: Path) -> dict:
    """One row of ``evomal show``: method, generations done / configured, best fitness, stages done."""
    from evomal.results.report import SUMMARY_MD, _fmt, generation_tables

    config = _config(exp_dir)
    method = config.get("method", "?")
    tables = generation_tables(exp_dir)
    configured = config.get("search", {}).get("generations", "?") if config else "?"
    best = _best_fitness(exp_dir, tables)
    return {
        "experiment": exp_dir.name,
        "method": method,
        "generations": "-" if not method_generations(method) else f"{len(tables)} / {configured}",
        "best fitness": "-" if best is None else _fmt(best),
        "meta-test": "done" if (exp_dir / "meta_test_summary.tsv").exists() else "-",
        "transfer": "done" if (exp_dir / "transfer_summary.tsv").exists() else "-",
        "report": "done" if (exp_dir / "report" / SUMMARY_MD).exists() else "-",
    }


def list_experiments(results_dir: Path) -> str:
    import pandas as pd

    from evomal.results.report import to_text

    if not results_dir.is_dir():
        raise CLIError(f"no results folder {results_dir} (run snakemake first, or pass --results-dir)")
    found = sorted(p for p in results_dir.iterdir() if is_experiment_dir(p))
    if not found:
        return f"no experiments under {results_dir}"
    rows, problems = [], []
    for path in found:  # one damaged folder must not hide the others
        try:
            rows.append(experiment_status(path))
        except (files.ResultFileError, OSError, ValueError, KeyError) as exc:
            rows.append({"experiment": path.name, "method": "damaged"})
            problems.append(f"{path.name}: {_one_line(exc)}")
    text = f"experiments under {results_dir}:\n\n" + to_text(pd.DataFrame(rows).fillna("?"))
    return text + "".join(f"\n\n{p}" for p in problems)


def _section(title: str, body: str) -> str:
    return f"{title}\n" + "\n".join("  " + line if line else "" for line in body.splitlines())


def describe_experiment(exp_dir: Path) -> str:
    """The text of ``evomal show results/<experiment>``."""
    from evomal.results.report import (DECISION_LABELS, _component_name, _fmt, _share, experiment_verdicts,
                                       filter_savings, generation_tables, method_table, metric_label,
                                       read_generations, to_text)

    config = _config(exp_dir)
    status = experiment_status(exp_dir)
    head = f"Experiment {exp_dir.name}"
    if config:
        head += (f" (method {config.get('method', '?')}, dataset {_component_name(config.get('dataset'))}, "
                 f"model {_component_name(config.get('model'))})")
    if status["generations"] != "-":
        head += f": generations {status['generations']}"
    # the answer first, in words; the tables below are the evidence
    verdict = experiment_verdicts(exp_dir, config)
    parts = ["\n".join(verdict) if verdict else "No verdict yet: the meta-test has not run.", head]

    loss_json = exp_dir / "best" / "loss.json"
    if loss_json.exists():
        doc = files.read_json(loss_json)
        facts = [f"candidate {doc['id']}, generation {doc.get('generation', '?')}"] if "id" in doc else []
        if doc.get("fitness") is not None:
            facts.append(f"search fitness {_fmt(files.number(doc['fitness']))}")
        lines = [f"expression: {doc.get('expression', '?')}", f"formula:    {doc.get('formula', '?')}"]
        lines.append(f"trained:    {_training_text(doc, config)}")
        if (exp_dir / "best" / "loss.py").exists():
            lines.append(f"standalone: {exp_dir / 'best' / 'loss.py'}")
        parts.append(_section(f"Best loss{' (' + ', '.join(facts) + ')' if facts else ''}:", "\n".join(lines)))
    elif method_searches(config.get("method", "?")):
        parts.append("Best loss: not selected yet")

    if (exp_dir / "finalists.tsv").exists():
        from evomal.results.report.finalists import finalists_sentence, finalists_view

        frame = files.read_tsv(exp_dir / "finalists.tsv")
        parts.append(_section(f"Finalists (trained from scratch, scored on validation; lower is better). "
                              f"{finalists_sentence(frame)}", to_text(finalists_view(frame))))

    for title, per_seed_name, summary_name in (("Meta-test", "meta_test.tsv", "meta_test_summary.tsv"),
                                               ("Transfer", "transfer.tsv", "transfer_summary.tsv")):
        if not (exp_dir / summary_name).exists():
            if title == "Meta-test" or config.get("transfer"):
                parts.append(f"{title}: not run yet")
            continue
        summary = files.read_tsv(exp_dir / summary_name)
        per_seed = files.read_tsv(exp_dir / per_seed_name) if (exp_dir / per_seed_name).exists() else None
        metric = metric_label(per_seed["metric"].dropna()) if per_seed is not None and len(per_seed) else "metric"
        body = to_text(method_table(summary, per_seed)) if len(summary) else "no runs recorded"
        parts.append(_section(f"{title} (test {metric}, mean ± std over seeds, paired t-test vs baseline; "
                              f"lower is better):", body))

    tables = generation_tables(exp_dir)
    if tables:
        savings = filter_savings(read_generations(tables))
        total = int(savings["candidates"].sum())
        skipped = total - int(savings.loc[savings["decision"] == "evaluate", "candidates"].sum())
        shown = savings.assign(decision=savings["decision"].map(DECISION_LABELS),
                               share=[_share(c, total) for c in savings["candidates"]])
        parts.append(_section(f"Filter savings ({skipped} of {total} candidates, {_share(skipped, total)}, "
                              "skipped the local search and fitness training):", to_text(shown)))
    return "\n\n".join(parts)


def _training_text(loss_doc: dict, config: dict) -> str:
    """The optimiser the loss's weights were tuned for (best/loss.json ``sgd``; older files: config.yaml)."""
    sgd, batch = loss_doc.get("sgd"), loss_doc.get("batch_size")
    where = ""
    if sgd is None and config.get("training"):
        t = config["training"]
        sgd = {k: t[k] for k in ("lr", "momentum", "nesterov", "weight_decay") if k in t}
        batch, where = t.get("batch_size"), " (from config.yaml: this loss file predates the record)"
    if not sgd:
        return "settings not recorded"
    args = ", ".join(f"{k}={v!r}" for k, v in sgd.items())
    return (f"torch.optim.SGD({args}){f', batch size {batch}' if batch else ''}{where}; the edge weights were "
            "tuned for this optimiser: train with the same settings")


# --------------------------------------------------------------------------- subcommands
def cmd_show(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    if args.path is None:
        print(list_experiments(results_dir))
        return 0
    path = Path(args.path)
    if not path.exists() and (results_dir / args.path).exists():
        path = results_dir / args.path  # `evomal show <name>` as a shorthand
    if not path.exists():
        raise CLIError(f"no such experiment folder: {args.path}")
    if is_experiment_dir(path):
        print(describe_experiment(path))
    elif path.is_dir():
        print(list_experiments(path))
    else:
        raise CLIError(f"{args.path} is not an experiment folder (expected results/<experiment>)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Every file of the contract (evomal.pipeline.check); status 1 if one is damaged or missing."""
    from evomal.pipeline.check import check_results, report_text

    path = Path(args.path)
    if not path.is_dir():
        raise CLIError(f"no such results folder: {args.path}")
    results = check_results(path)
    if not results:
        raise CLIError(f"no experiment folders in {args.path} (expected results/ or results/<experiment>)")
    text, intact = report_text(results)
    print(text)
    return 0 if intact else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evomal", description="EvoMAL: meta-learned symbolic loss functions. "
                                     "Run the pipeline with snakemake; inspect its results with this command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    show = sub.add_parser("show", help="list experiments, or show one experiment's results",
                          description="Without PATH: list the experiments under the results folder with their "
                                      "status. With PATH (results/<experiment>, or just <experiment>): print the "
                                      "best loss, the meta-test and transfer tables and the filter savings.")
    show.add_argument("path", nargs="?", help="experiment folder, e.g. results/digits-mlp")
    show.add_argument("--results-dir", default=DEFAULT_RESULTS, help="results folder (default: %(default)s)")
    show.set_defaults(func=cmd_show)
    check = sub.add_parser("check", help="verify every file of a results folder",
                           description="Read every file of the file contract as the pipeline does: JSON and tables "
                                       "parse, tensors load weights-only, fingerprints match their inputs, each "
                                       "fitness.json agrees with its fitness.tsv. Names each damaged or missing "
                                       "file and how to repair it; exit status 1 if there is one.")
    check.add_argument("path", metavar="RESULTS_DIR", help="results folder, or one experiment folder in it")
    check.set_defaults(func=cmd_check)
    return parser


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `evomal show | head`
        return 0
    except KeyError as exc:  # a field missing from a results file
        print(f"evomal: error: a results file lacks the field {exc}", file=sys.stderr)
        return 1
    except (CLIError, files.ResultFileError, OSError, ValueError) as exc:
        print(f"evomal: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
