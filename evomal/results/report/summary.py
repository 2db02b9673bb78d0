"""The summary of an experiment (``report/summary.md`` and its HTML twin), a whole report folder built
without Snakemake, and the check of a report folder.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from evomal.core import files
from evomal.core.joblog import JobLog
from evomal.results.report.finalists import finalists_sentence, finalists_view
from evomal.methods.registry import method_searches
# the report's file names live with the file contract: the Snakefile reads them at parse time
from evomal.pipeline.contract import PLOT_FILES, SUMMARY_HTML, SUMMARY_MD  # noqa: F401  (re-exported)
from evomal.results.report.plots import (CURVE_TITLES, VECTOR_SUFFIX, _record, check_png, check_svg, metric_label,
                                         plot_learning_curves, plot_search)
from evomal.results.report.shapes import plot_loss_shape
from evomal.results.report.tables import (_fmt, _share, filter_savings, generation_tables, method_table,
                                          read_generations, savings_table, search_table, to_markdown)
from evomal.results.report.verdict import verdicts


# =========================================================================== summary
@dataclass(frozen=True)
class Block:
    """One piece of the summary, rendered to both Markdown and HTML."""

    kind: str  # "h1" | "h2" | "p" | "code" | "math" | "table" | "image" | "list"
    content: object
    extra: str = ""  # link target / alt text


def _read_yaml(path) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise files.ResultFileError(f"missing results file {path}") from None
    except yaml.YAMLError as exc:
        raise files.ResultFileError(f"corrupted results file {path}: not valid YAML ({exc})") from None


def _component_name(spec) -> str:
    return spec if isinstance(spec, str) else (spec or {}).get("name", "?")


def _rel(path, start_dir) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start_dir).resolve())).as_posix()


def summary_blocks(*, experiment: str, out_dir, config: dict | None = None, generations: pd.DataFrame | None = None,
                   best_loss: dict | None = None, loss_py=None, meta_test=None, meta_test_summary=None,
                   transfer=None, transfer_summary=None, plots: dict | None = None,
                   compared: dict | None = None, finalists=None) -> list[Block]:
    """The summary's content; paths (``loss_py``, tables, ``plots``) are linked relative to ``out_dir``.

    ``compared``: label -> loss document of the other experiments' learned losses in this meta-test.
    """
    config = config or {}
    plots = plots or {}
    blocks = [Block("h1", f"{experiment}: results")]
    if config:
        s = config.get("search", {})
        facts = [f"method {config.get('method', '?')}", f"dataset {_component_name(config.get('dataset'))}",
                 f"model {_component_name(config.get('model'))}", f"seed {config.get('seed', '?')}"]
        if method_searches(config.get("method", "?")) and generations is not None:
            done = generations["generation"].nunique() if len(generations) else 0
            facts.append(f"generations {done} of {s.get('generations', '?')} (population {s.get('population', '?')})")
        blocks.append(Block("p", ", ".join(facts) + "."))
    sentences = _verdict_sentences(config, meta_test, meta_test_summary, transfer, transfer_summary)
    if sentences:
        blocks.append(Block("h2", "Verdict"))
        blocks.append(Block("list", [(text, None) for text in sentences]))

    if best_loss is not None:
        blocks.append(Block("h2", "Best loss"))
        family = best_loss.get("family")  # ML3, TaylorGLO (docs/methods.md); None: a GP expression
        blocks.append(Block("p", f"Loss of the {family} family:" if family else
                            "Expression (prefix form, edge weights not shown):"))
        blocks.append(Block("code", best_loss.get("expression", "")))
        blocks.append(Block("p", "Readable form with the learned parameters (f: prediction, y: target):" if family else
                            "Readable formula with the meta-learned weights folded in (f: prediction, "
                            "y: target; log and sqrt are protected by a 1e-7 clamp that is not shown):"))
        blocks.append(Block("code", best_loss.get("formula", "")))
        if best_loss.get("latex"):
            blocks.append(Block("math", best_loss["latex"]))
        facts = []
        if best_loss.get("fitness") is not None:
            facts.append(f"Search fitness {_fmt(files.number(best_loss['fitness']))} (validation, lower is better)")
        if best_loss.get("id") is not None:
            facts.append(f"candidate {best_loss['id']} of generation {best_loss.get('generation', '?')}")
        facts.append(f"{best_loss.get('kind', '?')} loss with {len(best_loss.get('weights', []))} "
                     f"{'learned parameters' if family else 'edge weights'}")
        blocks.append(Block("p", "; ".join(facts) + "."))
        if best_loss.get("sgd"):
            args = ", ".join(f"{k}={v!r}" for k, v in best_loss["sgd"].items())
            blocks.append(Block("p", f"Learned for torch.optim.SGD({args}), batch size {best_loss.get('batch_size', '?')}: "
                                     "the edge weights were tuned through this optimiser's steps (they also scale the "
                                     "effective step size), so train with the same settings."))
        if loss_py is not None:
            blocks.append(Block("list", [("Standalone PyTorch source (needs only torch): ", _rel(loss_py, out_dir))]))

    if finalists is not None:
        frame = files.read_tsv(finalists)
        blocks.append(Block("h2", "Finalists"))
        blocks.append(Block("p", finalists_sentence(frame)))
        blocks.append(Block("p", "The best distinct losses of the search and the baseline, each trained from scratch "
                                 "on the training split with the meta-test budget and scored on the validation split "
                                 "(lower is better); the best learned mean was meta-tested."))
        blocks.append(Block("table", finalists_view(frame)))

    if compared:
        blocks.append(Block("h2", "Compared learned losses"))
        blocks.append(Block("p", "Best losses of the experiments named in `compare`, meta-tested here too:"))
        blocks.append(Block("table", pd.DataFrame(
            [{"experiment": label, "method": doc.get("method", "?"), "formula": doc.get("formula", "?"),
              "search fitness": _fmt(files.number(doc["fitness"])) if doc.get("fitness") is not None else "-"}
             for label, doc in compared.items()])))

    for title, per_seed_path, summary_path in (("Meta-test", meta_test, meta_test_summary),
                                               ("Transfer", transfer, transfer_summary)):
        if summary_path is None:
            continue
        blocks.append(Block("h2", title))
        per_seed = files.read_tsv(per_seed_path) if per_seed_path is not None else None
        summary = files.read_tsv(summary_path)
        if summary.empty:
            blocks.append(Block("p", "No runs were recorded."))
            continue
        metric = metric_label(per_seed["metric"].dropna()) if per_seed is not None else "test metric"
        blocks.append(Block("p", f"Test {metric} per method over the seeds (mean ± sample std; lower is better). "
                                 "The learned losses and the baseline trained with the same seeds, batches and "
                                 "settings; p is a two-sided paired t-test against the baseline over seeds; "
                                 "wins / losses count seeds where the method's test metric is lower / higher "
                                 "than the baseline's."))
        blocks.append(Block("table", method_table(summary, per_seed)))

    if generations is not None and len(generations):
        blocks.append(Block("h2", "Filter savings"))
        blocks.append(Block("p", "Share of candidates per filter decision. Only 'evaluated' candidates ran the "
                                 "local search and the fitness training; the others were skipped (equivalent: same "
                                 "canonical form as an earlier loss; gradient-equivalent: same gradient signature; "
                                 "rejected: failed the rejection protocol; invalid: unusable expression)."))
        savings = filter_savings(generations).set_index("decision")
        total, evaluated = int(savings["candidates"].sum()), int(savings.loc["evaluate", "candidates"])
        blocks.append(Block("p", f"The filters spared {total - evaluated} of {total} candidates "
                                 f"({_share(total - evaluated, total)}) the local search and fitness training."))
        blocks.append(Block("table", savings_table(generations)))
        blocks.append(Block("h2", "Search progress"))
        blocks.append(Block("table", search_table(generations)))

    titles = {"fitness": "Fitness per generation", "decisions": "Filter decisions per generation",
              "loss_shape": "Learned loss against the baseline", "meta_test_curves": "Meta-test learning curves",
              "transfer_curves": "Transfer learning curves"}
    present = [(name, path) for name, path in plots.items() if path is not None]
    if present:
        blocks.append(Block("h2", "Plots"))
        for name, path in present:
            blocks.append(Block("image", _rel(path, out_dir), titles.get(name, name)))
    return blocks


def _verdict_sentences(config: dict, meta_test, meta_test_summary, transfer, transfer_summary) -> list[str]:
    exclude = (config.get("meta_test") or {}).get("references") or ()
    out = []
    for per_seed_path, summary_path, where in ((meta_test, meta_test_summary, None),
                                               (transfer, transfer_summary, "transfer")):
        if summary_path is None:
            continue
        per_seed = files.read_tsv(per_seed_path) if per_seed_path is not None else None
        for v in verdicts(files.read_tsv(summary_path), per_seed, exclude=exclude):
            text = v.sentence(where="test" if where is None else f"{v.target} (transfer, test split)")
            out.append(text[:1].upper() + text[1:] + ".")
    return out


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.content}")
        elif b.kind == "h2":
            out.append(f"## {b.content}")
        elif b.kind == "p":
            out.append(str(b.content))
        elif b.kind == "code":
            out.append(f"```\n{b.content}\n```")
        elif b.kind == "math":
            out.append(f"$$\n{b.content}\n$$")
        elif b.kind == "table":
            out.append(to_markdown(b.content))
        elif b.kind == "image":
            svg = Path(str(b.content)).with_suffix(VECTOR_SUFFIX).as_posix()
            out.append(f"### {b.extra}\n\n![{b.extra}]({b.content})\n\nVector version: [{svg}]({svg})")
        elif b.kind == "list":
            out.append("\n".join(f"- {text}" + (f"[{target}]({target})" if target else "")
                                  for text, target in b.content))
    return "\n\n".join(out) + "\n"


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}
pre{background:#f5f5f5;padding:0.5em;white-space:pre-wrap}</style></head><body>
{% for b in blocks %}
{%- if b.kind in ("h1", "h2", "p") %}<{{ b.kind }}>{{ b.content }}</{{ b.kind }}>
{%- elif b.kind == "code" %}<pre><code>{{ b.content }}</code></pre>
{%- elif b.kind == "math" %}<p>LaTeX:</p><pre><code>{{ b.content }}</code></pre>
{%- elif b.kind == "table" %}<table><thead><tr>{% for c in b.content.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in b.content.itertuples(index=False) %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{%- elif b.kind == "image" %}<h3>{{ b.extra }}</h3><img alt="{{ b.extra }}" style="max-width:100%" src="data:image/png;base64,{{ images[loop.index0] }}">
{%- elif b.kind == "list" %}<ul>{% for text, target in b.content %}<li>{{ text }}{{ target or "" }}</li>{% endfor %}</ul>
{%- endif %}
{% endfor %}</body></html>
"""


def render_html(blocks: Sequence[Block], title: str, base_dir=".") -> str:
    """Self-contained HTML (a Jinja2 template, every value escaped): the plots (linked relative to
    ``base_dir``) are embedded as data URIs."""
    import base64

    import jinja2

    images = {i: base64.b64encode((Path(base_dir) / str(b.content)).read_bytes()).decode()
              for i, b in enumerate(blocks) if b.kind == "image"}
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_HTML)
    return template.render(blocks=blocks, title=title, images=images)


def write_summary(md_path, html_path=None, *, experiment: str, config=None, fitness_tables: Sequence = (),
                  best_loss=None, loss_py=None, meta_test=None, meta_test_summary=None, transfer=None,
                  transfer_summary=None, plots: dict | None = None, compared: Sequence = (), finalists=None,
                  log: str | None = None) -> list[Block]:
    """``report/summary.md`` (and its HTML twin for the Snakemake report) from the result files.

    Arguments are paths; those left None are sections the experiment does not have. ``compared``: the
    ``<experiment>/best/loss.json`` files of other experiments in the meta-test.
    """
    out_dir = Path(md_path).parent
    blocks = summary_blocks(
        experiment=experiment, out_dir=out_dir, config=_read_yaml(config) if config is not None else None,
        generations=read_generations(fitness_tables) if fitness_tables else None,
        best_loss=files.read_json(best_loss) if best_loss is not None else None, loss_py=loss_py,
        meta_test=meta_test, meta_test_summary=meta_test_summary, transfer=transfer,
        transfer_summary=transfer_summary, plots=plots, finalists=finalists,
        compared={Path(p).parent.parent.name: files.read_json(p) for p in compared})
    files.atomic_write_bytes(md_path, render_markdown(blocks).encode())
    if html_path is not None:
        files.atomic_write_bytes(html_path, render_html(blocks, f"{experiment}: results", out_dir).encode())
    JobLog(log)(f"wrote {md_path}")
    return blocks


def write_summary_from_inputs(inputs: dict, md_path, html_path, *, experiment: str, log: str | None = None):
    """write_summary with the named inputs of the Snakemake rule (keys as in report.smk's report_inputs)."""
    t0 = time.perf_counter()
    plots = {name: inputs.get(name) for name in PLOT_FILES}
    keys = ("config", "best_loss", "loss_py", "meta_test", "meta_test_summary", "transfer", "transfer_summary",
            "finalists")
    blocks = write_summary(md_path, html_path, experiment=experiment, plots=plots,
                           fitness_tables=list(inputs.get("fitness_tables") or []),
                           compared=list(inputs.get("compared") or []), log=log,
                           **{k: inputs.get(k) for k in keys})
    _record(md_path, "report", t0)
    return blocks


# =========================================================================== a whole folder
def experiment_inputs(exp_dir: str | os.PathLike) -> dict:
    """The report inputs present in an experiment folder (for building a report without Snakemake)."""
    d = Path(exp_dir)
    present = lambda name: d / name if (d / name).exists() else None  # noqa: E731
    return {"config": present("config.yaml"), "fitness_tables": generation_tables(d),
            "best_loss": present("best/loss.json"), "meta_test": present("meta_test.tsv"),
            "meta_test_summary": present("meta_test_summary.tsv"), "meta_test_curves": present("meta_test_curves.json"),
            "transfer": present("transfer.tsv"), "transfer_summary": present("transfer_summary.tsv"),
            "transfer_curves": present("transfer_curves.json"), "finalists": present("finalists.tsv")}


def build_report(exp_dir: str | os.PathLike, *, loss_paths: dict | None = None) -> dict[str, Path]:
    """Everything the Snakemake rules make for one experiment folder, from the files it holds.

    ``loss_paths`` (method -> loss.json) defaults to this experiment's own best loss. Returns name -> path.
    """
    from evomal.losses.export import write_torch_source

    d = Path(exp_dir)
    out = d / "report"
    inp = experiment_inputs(d)
    made: dict[str, Path] = {}
    if inp["fitness_tables"]:
        made["fitness"], made["decisions"] = out / PLOT_FILES["fitness"], out / PLOT_FILES["decisions"]
        plot_search(inp["fitness_tables"], made["fitness"], made["decisions"])
    if inp["best_loss"] is not None:
        made["loss_py"] = d / "best" / "loss.py"
        write_torch_source(inp["best_loss"], made["loss_py"])
    if loss_paths is None and inp["best_loss"] is not None:
        method = files.read_json(inp["best_loss"]).get("method") or "learned"
        loss_paths = {method: inp["best_loss"]}
    if loss_paths:
        made["loss_shape"] = out / PLOT_FILES["loss_shape"]
        plot_loss_shape(loss_paths, made["loss_shape"])
    for stage in ("meta_test", "transfer"):
        if inp[f"{stage}_curves"] is not None:
            made[f"{stage}_curves"] = out / PLOT_FILES[f"{stage}_curves"]
            plot_learning_curves(inp[f"{stage}_curves"], made[f"{stage}_curves"], per_seed_tsv=inp[stage],
                                 title=CURVE_TITLES[stage])
    plots = {k: v for k, v in made.items() if k in PLOT_FILES}
    made["summary"], made["summary_html"] = out / SUMMARY_MD, out / SUMMARY_HTML
    write_summary(made["summary"], made["summary_html"], experiment=d.name, config=inp["config"],
                  fitness_tables=inp["fitness_tables"], best_loss=inp["best_loss"], loss_py=made.get("loss_py"),
                  meta_test=inp["meta_test"], meta_test_summary=inp["meta_test_summary"], transfer=inp["transfer"],
                  transfer_summary=inp["transfer_summary"], plots=plots)
    return made


# =========================================================================== checks
def check_report_dir(report_dir: str | os.PathLike, *, expected: Iterable[str] = ()) -> list[Path]:
    """Check a ``<experiment>/report`` folder: summary.md (+ summary.html) and every plot it links.

    ``expected``: plot names (keys of PLOT_FILES) that must be among them. Returns the PNGs checked;
    raises AssertionError naming the first problem. Reusable after a real pipeline run.
    """
    report_dir = Path(report_dir)
    md = report_dir / SUMMARY_MD
    assert md.is_file(), f"{md}: missing"
    text = md.read_text()
    assert text.startswith("# ") and len(text) > 200, f"{md}: too short to be a summary"
    assert (report_dir / SUMMARY_HTML).is_file(), f"{report_dir / SUMMARY_HTML}: missing"
    linked = [report_dir / target for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)]
    for name in expected:
        path = report_dir / PLOT_FILES[name]
        assert path in linked, f"{md}: does not link the {name} plot {PLOT_FILES[name]}"
    assert linked, f"{md}: links no plot"
    for path in linked:
        check_png(path)
        check_svg(path.with_suffix(VECTOR_SUFFIX))  # every plot has its vector twin
    return linked
