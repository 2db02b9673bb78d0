"""What the MLflow UI shows without clicking: the experiment's saved view of its candidates, the search
run's description and source (git commit), and the address that opens them.

MLflow 3's runs table shows only run name, creation time, dataset, duration, source and models until
columns are picked by hand. An experiment tag ``mlflow.sharedViewState.<key>`` holds a view state
that the UI opens from ``#/experiments/<id>/runs?viewStateShareKey=<key>`` (its "share view"
feature); ours, :data:`CANDIDATES_VIEW`, lists every candidate of every search with fitness, decision,
expression, canonical key and generation as columns, best first.
"""
from __future__ import annotations

import json
from pathlib import Path

from evomal.results.tracking.payloads import NOTE_TAG  # the description of a run or an experiment

#: the view key of the candidates table (the experiment tag is SHARED_VIEW_TAG + key)
CANDIDATES_VIEW = "evomal-candidates"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
#: the UI opens an experiment of this kind in its model-training layout (runs table, charts)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

#: columns of the candidates view (MLflow's column keys; the UI shows them grouped, params before tags)
#: with widths in px. The run name already says the fitness (payloads.candidate_run_name).
CANDIDATE_COLUMNS = {
    "tags.`fitness`": 90, "tags.`decision`": 150, "params.`expression`": 420, "params.`key`": 260,
    "params.`generation`": 90, "tags.`reason`": 320,
}


def candidates_view() -> dict:
    """The view state of the candidates table: candidate runs only, best fitness first."""
    return {
        "searchFilter": "tags.`evomal.level` = 'candidate'",
        "orderByKey": "metrics.`fitness`",
        "orderByAsc": True,
        "selectedColumns": list(CANDIDATE_COLUMNS),
        "columnWidths": dict(CANDIDATE_COLUMNS),
    }


def experiment_tags(experiment: str) -> dict[str, str]:
    """Tags of the MLflow experiment: layout, the candidates view, a description."""
    note = (f"EvoMAL loss search `{experiment}`: one run per search, a nested run per generation and, under "
            f"it, one per candidate loss. The candidates table (fitness, decision, expression, key; best "
            f"first) is the view `{CANDIDATES_VIEW}`: open the experiment's Runs page with "
            f"`?viewStateShareKey={CANDIDATES_VIEW}`.")
    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], SHARED_VIEW_TAG + CANDIDATES_VIEW: json.dumps(candidates_view()),
            NOTE_TAG: note}


def runs_page(experiment_id: str, *, base: str = "http://127.0.0.1:5000") -> str:
    """Address of the candidates view of an experiment in an ``mlflow ui`` at ``base``."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={CANDIDATES_VIEW}")


def source_tags(code_dir: str | Path | None = None) -> dict[str, str]:
    """``mlflow.source.*`` tags of the search run: the workflow's folder and its git commit (if any)."""
    from mlflow.utils.git_utils import get_git_branch, get_git_commit

    code_dir = Path(code_dir) if code_dir is not None else Path(__file__).resolve().parents[3]
    tags = {"mlflow.source.name": str(code_dir / "Snakefile"), "mlflow.source.type": "LOCAL"}
    commit = get_git_commit(str(code_dir))
    if commit:
        tags["mlflow.source.git.commit"] = commit
        branch = get_git_branch(str(code_dir))
        if branch:
            tags["mlflow.source.git.branch"] = branch
    return tags


def search_description(experiment: str, config: dict | None, results_dir: str | Path) -> str:
    """The search run's description (Markdown, shown on its page in the UI)."""
    lines = [f"**EvoMAL search `{experiment}`**, results in `{Path(results_dir).resolve()}`."]
    if config:
        def name(spec) -> str:
            return spec if isinstance(spec, str) else (spec or {}).get("name", "?")

        s, t = config.get("search", {}), config.get("training", {})
        lines.append(
            f"Method `{config.get('method', '?')}` on dataset `{name(config.get('dataset'))}` with model "
            f"`{name(config.get('model'))}`, seed {config.get('seed', '?')}: population "
            f"{s.get('population', '?')} for {s.get('generations', '?')} generations; each candidate trains "
            f"{t.get('steps', '?')} SGD steps (lr {t.get('lr', '?')}, momentum {t.get('momentum', '?')}) and its "
            "fitness is the validation error rate (MSE for regression), lower is better.")
    lines.append("Nested runs: `gen_<g>` per generation, and under it one run per candidate loss (run name: id "
                 "and fitness or filter decision). Meta-test and transfer results are the metrics "
                 "`meta_test/...` and `transfer/...` of this run; `evomal show` prints them with a verdict.")
    return "\n\n".join(lines)


def apply_views(client, run, experiment: str, config: dict | None, results_dir: str | Path) -> None:
    """Set the experiment's tags and the search run's description and source; only what differs is written."""
    from mlflow.entities import RunTag

    exp = client.get_experiment(run.info.experiment_id)
    for key, value in experiment_tags(experiment).items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    wanted = {**source_tags(), NOTE_TAG: search_description(experiment, config, results_dir)}
    todo = [RunTag(k, v) for k, v in wanted.items() if run.data.tags.get(k) != v]
    if todo:
        client.log_batch(run.info.run_id, tags=todo)
