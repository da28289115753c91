"""Class-match retrieval evaluation: do an item's nearest neighbours share its class?

Queries are searched against the gallery with FAISS exact inner-product search (rows are unit
length, so scores are cosine similarities), ``block`` queries at a time: memory stays at
``block x list_length`` for the results plus FAISS's own fixed-size tiles, never a dense
``n_queries x n_gallery`` matrix. Per-query metrics come from :mod:`lookalike.evaluate.metrics`.

Two protocols:

- ``split``: queries (e.g. the test split) against a separate gallery (the train split).
- ``leave-one-out``: every gallery item queries the rest of the gallery; its own row is excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import lookalike.evaluate.metrics as m
from lookalike.evaluate.metrics import EvaluationError

from lookalike.evaluate.neighbours import (  # noqa: F401  (re-exported)
    Neighbours,
    _drop_self,
    _fit_width,
    _id_array,
    _prepare_search,
    _progress_bar,
    _search_blocks,
    _unit_rows,
    nearest_rows,
)
from lookalike.evaluate.neighbours import neighbours as neighbours  # noqa: F401

if TYPE_CHECKING:
    from rich.table import Table

SPLIT = "split"
LEAVE_ONE_OUT = "leave-one-out"


# ---- the report -----------------------------------------------------------------------------
@dataclass
class RetrievalReport:
    """The result of :func:`evaluate_retrieval`.

    ``metrics`` holds means over all queries (e.g. ``P@10``, ``R@10``, ``HR@10``, ``mAP@100``,
    ``NDCG@10``); ``per_class`` the same means per query class plus ``queries`` (how many queries
    had that class) and ``gallery`` (how many gallery items do).
    """

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    n_queries: int
    n_gallery: int
    class_column: str
    protocol: str
    #: Queries whose class has no item in the gallery: counted with every metric at 0.
    queries_without_relevant: int = 0
    classes_without_gallery: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    #: Top neighbours of every query (for result grids); not written to JSON.
    neighbours: Neighbours | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of everything but the neighbour lists."""
        return {
            "protocol": self.protocol,
            "class_column": self.class_column,
            "n_queries": self.n_queries,
            "n_gallery": self.n_gallery,
            "metrics": {k: _round(v) for k, v in self.metrics.items()},
            "queries_without_relevant": self.queries_without_relevant,
            "classes_without_gallery": list(self.classes_without_gallery),
            "settings": dict(self.settings),
            "per_class": {label: {k: _round(v) for k, v in values.items()}
                          for label, values in self.per_class.items()},
        }

    def table(self, per_class: int = 0, columns: Sequence[str] | None = None) -> "Table":
        """A Rich table of the overall metrics (plus the ``per_class`` largest classes).

        ``columns`` picks metrics; by default every P@k, then R@, HR@ at the largest k, mAP and
        NDCG, which fits an 80-column terminal.
        """
        from rich.table import Table

        names = list(columns) if columns is not None else self._compact_columns()
        title = (f"{self.protocol}: {self.n_queries:,} queries vs {self.n_gallery:,} gallery, "
                 f"relevant = same {self.class_column}")
        table = Table(title=title)
        table.add_column("class")
        table.add_column("queries", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        table.add_row("all", f"{self.n_queries:,}",
                      *(f"{self.metrics.get(name, float('nan')):.3f}" for name in names))
        largest = sorted(self.per_class.items(), key=lambda kv: -kv[1]["queries"])[:per_class]
        for label, values in largest:
            table.add_row(label, f"{int(values['queries']):,}",
                          *(f"{values.get(name, float('nan')):.3f}" for name in names))
        return table

    def _compact_columns(self) -> list[str]:
        precision = [n for n in self.metrics if n.startswith("P@")]
        largest = max((int(n[2:]) for n in precision), default=None)
        others = [f"R@{largest}", f"HR@{largest}"] if largest else []
        ranked = [n for n in self.metrics if n.startswith(("mAP@", "NDCG@"))]
        return [n for n in precision + others + ranked if n in self.metrics]

    def text(self) -> str:
        """The overall metrics as plain text, one ``name value`` per line."""
        lines = [f"{self.protocol}: {self.n_queries} queries vs {self.n_gallery} gallery "
                 f"(relevant = same {self.class_column})"]
        lines += [f"  {name:<10} {value:.4f}" for name, value in self.metrics.items()]
        if self.queries_without_relevant:
            lines.append(f"  {self.queries_without_relevant} queries have no same-class item in "
                         f"the gallery (scored 0)")
        return "\n".join(lines)


def _round(value: float) -> float | None:
    return None if value != value else round(float(value), 6)  # NaN -> null in JSON


# ---- evaluation -------------------------------------------------------------------------------
def evaluate_retrieval(query_vectors: np.ndarray, query_labels: Sequence[Any],
                       gallery_vectors: np.ndarray | None = None,
                       gallery_labels: Sequence[Any] | None = None, *,
                       ks: Sequence[int] = (1, 5, 10), map_at: int = 100, ndcg_at: int = 10,
                       block: int = 1024, query_ids: Sequence[Any] | None = None,
                       gallery_ids: Sequence[Any] | None = None, leave_one_out: bool = False,
                       class_column: str = "class", keep_neighbours: int | None = None,
                       progress: bool = False) -> RetrievalReport:
    """Class-match retrieval quality of an embedding: is a query's neighbour of its class?

    A gallery item is relevant to a query when their labels (compared as strings) are equal.
    With ``leave_one_out`` the gallery defaults to the queries and each query's own row is
    excluded (by id when ids are given). ``keep_neighbours`` (default ``max(ks)``) neighbours per
    query are kept on the report for result grids.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1 or map_at < 1 or ndcg_at < 1:
        raise EvaluationError(f"ks, map_at and ndcg_at must be positive, got {ks}, {map_at}, "
                              f"{ndcg_at}")
    if leave_one_out and gallery_labels is None:
        gallery_labels = query_labels
    if gallery_labels is None:
        raise EvaluationError("gallery_labels is required unless leave_one_out=True")
    queries, gallery, self_rows, gallery_id_array = _prepare_search(
        query_vectors, gallery_vectors, leave_one_out, query_ids, gallery_ids)
    query_codes, gallery_codes, classes = _encode_labels(query_labels, gallery_labels,
                                                         len(queries), len(gallery))

    # n_relevant: same-class gallery items, minus the query itself under leave-one-out.
    gallery_counts = np.bincount(gallery_codes, minlength=len(classes))
    n_relevant = gallery_counts[query_codes].astype(np.int64)
    if self_rows is not None:
        own = self_rows >= 0
        n_relevant[own] -= gallery_codes[self_rows[own]] == query_codes[own]

    depth = max(*ks, map_at, ndcg_at)
    keep = max(ks) if keep_neighbours is None else int(keep_neighbours)
    kept = Neighbours(rows=np.full((len(queries), keep), -1, dtype=np.int64),
                      scores=np.full((len(queries), keep), -np.inf, dtype=np.float32),
                      gallery_ids=gallery_id_array)
    per_query = {name: np.zeros(len(queries)) for name in m.metric_names(ks, map_at, ndcg_at)}
    for start, rows, scores in _search_blocks(queries, gallery, depth, block, self_rows, progress):
        stop = start + len(rows)
        codes = np.where(rows >= 0, gallery_codes[np.maximum(rows, 0)], -1)
        relevant = codes == query_codes[start:stop, None]
        for name, values in m.per_query_metrics(relevant, n_relevant[start:stop], ks, map_at,
                                                ndcg_at).items():
            per_query[name][start:stop] = values
        kept.rows[start:stop] = rows[:, :keep]
        kept.scores[start:stop] = scores[:, :keep]

    per_class = _per_class(per_query, query_codes, gallery_counts, classes)
    without = n_relevant == 0
    return RetrievalReport(
        metrics=m.mean_metrics(per_query),
        per_class=per_class,
        n_queries=len(queries), n_gallery=len(gallery), class_column=class_column,
        protocol=LEAVE_ONE_OUT if leave_one_out else SPLIT,
        queries_without_relevant=int(without.sum()),
        classes_without_gallery=sorted({str(classes[c]) for c in query_codes[without]}),
        settings={"ks": list(ks), "map_at": map_at, "ndcg_at": ndcg_at,
                  "search": "faiss exact inner product", "block": block},
        neighbours=kept,
    )


def _per_class(per_query: dict[str, np.ndarray], query_codes: np.ndarray,
               gallery_counts: np.ndarray, classes: np.ndarray) -> dict[str, dict[str, float]]:
    """Each query class's mean metrics (with its query and gallery counts), by class name."""
    per_class: dict[str, dict[str, float]] = {}
    query_class_counts = np.bincount(query_codes, minlength=len(classes))
    for code in np.flatnonzero(query_class_counts):
        mask = query_codes == code
        values = {"queries": int(query_class_counts[code]), "gallery": int(gallery_counts[code])}
        values.update({name: m.mean(v[mask]) for name, v in per_query.items()})
        per_class[str(classes[code])] = values
    return dict(sorted(per_class.items()))


# ---- labels ---------------------------------------------------------------------------------
def _encode_labels(query_labels: Sequence[Any], gallery_labels: Sequence[Any], n_queries: int,
                   n_gallery: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer class codes for queries and gallery (labels compared as strings) + class names."""
    query_strings = [str(label) for label in query_labels]
    gallery_strings = [str(label) for label in gallery_labels]
    if len(query_strings) != n_queries:
        raise EvaluationError(f"{len(query_strings)} query labels for {n_queries} query vectors")
    if len(gallery_strings) != n_gallery:
        raise EvaluationError(
            f"{len(gallery_strings)} gallery labels for {n_gallery} gallery vectors")
    classes, codes = np.unique(np.array(query_strings + gallery_strings, dtype=object),
                               return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    return codes[:n_queries], codes[n_queries:], classes

