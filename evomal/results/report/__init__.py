"""Results of an experiment folder as tables, plots and a summary (DESIGN §1.7, §3: ``report/``).

Modules: ``tables`` (reading the result files, tables), ``plots`` (search and curve figures, PNG and
SVG checks), ``shapes`` (learned loss shapes), ``verdict`` (the answer in words) and ``summary``
(summary.md / summary.html, a whole folder).
"""
from evomal.pipeline.contract import DECISIONS
from evomal.results.report.plots import (
    CURVE_TITLES, DECISION_COLORS, OKABE_ITO, PNG_DPI, PNG_MAGIC, _new_figure, _no_data, _record, _render, _save_png,
    check_png, check_svg, draw_curves, draw_decisions, draw_fitness, method_styles, metric_label, plot_learning_curves,
    plot_search, vector_path)
from evomal.results.report.shapes import (
    ShapeData, baseline_elementwise, classification_shapes, draw_loss_shapes, learned_elementwise, loss_shapes,
    plot_loss_shape, regression_shapes)
from evomal.results.report.summary import (
    PLOT_FILES, SUMMARY_HTML, SUMMARY_MD, Block, _component_name, _read_yaml, _rel, build_report,
    check_report_dir, experiment_inputs, render_html, render_markdown, summary_blocks, write_summary,
    write_summary_from_inputs)
from evomal.results.report.verdict import (
    ALPHA, BASELINE_WORDS, Verdict, experiment_verdicts, print_run_summary, run_summary, show_command, verdicts)
from evomal.results.report.tables import (
    DECISION_LABELS, _fmt, _fmt_p, _share, curve_bands, decision_counts, filter_savings, fitness_by_generation,
    generation_tables, method_table, read_curves, read_generations, savings_table, search_table, to_markdown,
    to_text)

__all__ = [
    "CURVE_TITLES", "DECISIONS", "DECISION_COLORS", "OKABE_ITO", "PNG_DPI", "check_svg", "method_styles",
    "metric_label", "vector_path", "ALPHA", "BASELINE_WORDS", "Verdict", "experiment_verdicts", "print_run_summary",
    "run_summary", "show_command", "verdicts", "DECISION_LABELS", "PLOT_FILES", "PNG_MAGIC", "SUMMARY_HTML",
    "SUMMARY_MD", "Block", "ShapeData", "baseline_elementwise", "build_report", "check_png", "check_report_dir",
    "classification_shapes", "curve_bands", "decision_counts", "draw_curves", "draw_decisions", "draw_fitness",
    "draw_loss_shapes", "experiment_inputs", "filter_savings", "fitness_by_generation", "generation_tables",
    "learned_elementwise", "loss_shapes", "method_table", "plot_learning_curves", "plot_loss_shape", "plot_search",
    "read_curves", "read_generations", "regression_shapes", "render_html", "render_markdown", "savings_table",
    "search_table", "summary_blocks", "to_markdown", "to_text", "write_summary", "write_summary_from_inputs",
]
