"""Evaluation: retrieval metrics, class-match evaluation in blocks, and reports.

- :mod:`~lookalike.evaluate.metrics`: pure per-query metric functions (P@k, R@k, AP@k, NDCG@k,
  hit rate) and recall of an approximate search against exact search.
- :mod:`~lookalike.evaluate.retrieval`: :func:`evaluate_retrieval` (FAISS exact search, ``block``
  queries at a time, never an N x N matrix) and :func:`neighbours` for result grids.
- :mod:`~lookalike.evaluate.splits`: the seeded, stratified, saved validation split carved from
  train that benchmark choices are made on.
- :mod:`~lookalike.evaluate.report`: HTML/PNG result grids, Markdown/JSON tables, bar and line
  plots from plain rows of dicts.

Importing this package loads numpy only; FAISS, jinja2, Pillow and matplotlib load on first use.
"""

from lookalike.evaluate.metrics import (
    EvaluationError,
    average_precision_at_k,
    hit_rate_at_k,
    mean,
    mean_metrics,
    ndcg_at_k,
    per_query_metrics,
    precision_at_k,
    recall_against_exact,
    recall_at_k,
)
from lookalike.evaluate.report import (
    GridImage,
    GridRow,
    markdown_table,
    plot_bars,
    plot_lines,
    write_metrics_table,
    write_result_grid_html,
    write_result_grid_png,
)
from lookalike.evaluate.retrieval import (
    Neighbours,
    RetrievalReport,
    evaluate_retrieval,
    nearest_rows,
    neighbours,
)
from lookalike.evaluate.splits import (
    SplitError,
    ValidationSplit,
    saved_validation_split,
    stratified_sample,
    validation_split,
)

__all__ = [
    "EvaluationError", "GridImage", "GridRow", "Neighbours", "RetrievalReport", "SplitError",
    "ValidationSplit", "saved_validation_split", "stratified_sample", "validation_split",
    "average_precision_at_k", "evaluate_retrieval", "hit_rate_at_k", "markdown_table", "mean",
    "mean_metrics", "ndcg_at_k", "nearest_rows", "neighbours", "per_query_metrics", "plot_bars",
    "plot_lines", "precision_at_k", "recall_against_exact", "recall_at_k", "write_metrics_table",
    "write_result_grid_html", "write_result_grid_png",
]
