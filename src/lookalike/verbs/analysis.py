"""The analysis verbs of :class:`lookalike.project.Project`: train, evaluate, clusters and
near-duplicates (and shop-the-look's box regressor, personal picks' replay of an event log).

A mixin (never imported the other way): thin entry points over :mod:`lookalike.training_run`,
:mod:`lookalike.evaluate`, :mod:`lookalike.recommend.clusters` and
:mod:`lookalike.recommend.duplicates`, imported on first use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.storage import atomic_write_text


class AnalysisVerbs:
    """``train``, ``train_boxes``, ``evaluate``, ``evaluate_recs``, ``clusters``,
    ``load_clusters``, ``duplicates``, ``find_duplicates`` and ``duplicate_report`` of
    :class:`~lookalike.project.Project`."""

    def train(self, method: str, *, name: str | None = None,
              label_column: str | None = "article_type",
              options: Mapping[str, Any] | None = None, resume: bool = False,
              progress: bool = True):
        """Train a learning embedder (``cnn``, ``cnn-hash``, ``finetune``, ``pca``,
        ``projection``, ...) on this catalogue's train split; returns a
        :class:`~lookalike.training_run.TrainSummary`.

        ``options`` are the embedder's settings and its training settings (``epochs``,
        ``learning_rate``, ...) in one mapping. Checkpoints go to
        ``models/<name>/checkpoints/`` (``resume=True`` continues from them) and the finished
        model to ``models/<name>/``; index it with ``index(embedder="models/<name>")``.
        """
        self.require_writable("train")
        from lookalike.training_run import train_project

        return train_project(self, method, name=name, label_column=label_column,
                             options=options, resume=resume, progress=progress)

    def train_boxes(self, *, scenes: int = 600, per_product: int = 6, epochs: int = 10,
                    seed: int = 0, resume: bool = False, **training: Any) -> dict[str, Any]:
        """Train shop-the-look's box regressor on scenes generated from this catalogue's photos
        and save it in the project, where ``look`` finds it; see
        :func:`lookalike.recommend.box_regression.train_project_box_regressor`."""
        self.require_writable("train the box regressor")
        from lookalike.recommend.box_regression import train_project_box_regressor

        return train_project_box_regressor(self, scenes=scenes, per_product=per_product,
                                           epochs=epochs, seed=seed, resume=resume, **training)

    def evaluate(self, *, class_column: str = "category", index: str | None = None,
                 query_split: str | None = "test", gallery_split: str | None = "train",
                 ks: Sequence[int] = (1, 5, 10), map_at: int = 100, grid_queries: int = 12,
                 out_dir: str | Path | None = None, progress: bool = False):
        """Class-match retrieval quality of an index's embeddings.

        Queries are the ``query_split`` items against the ``gallery_split`` items; when the
        catalogue has no such splits, every item is a query against all others (leave-one-out).
        Writes ``eval.json``, a Markdown table and an HTML result grid into ``out_dir``
        (default ``<project>/reports/eval-<index>/``) and returns the
        :class:`~lookalike.evaluate.retrieval.RetrievalReport`.
        """
        from lookalike.evaluate.retrieval import evaluate_retrieval

        loaded = self.searcher(index)
        frame = self.store.frame()
        if class_column not in frame.columns:
            raise LookalikeError(f"class column {class_column!r} is not in the catalogue; "
                                 f"columns: {', '.join(map(str, frame.columns))}")
        frame = frame[frame[class_column].notna()]
        frame = frame[frame.index.isin(set(loaded.hashes))]
        splits = frame["split"] if "split" in frame.columns else None
        use_splits = (splits is not None and query_split and gallery_split
                      and (splits == query_split).any() and (splits == gallery_split).any())
        if use_splits:
            queries = frame[splits == query_split]
            gallery = frame[splits == gallery_split]
        else:
            queries = gallery = frame
        query_vectors = loaded.vectors_of(list(queries.index), self.store)
        gallery_vectors = (query_vectors if gallery is queries
                           else loaded.vectors_of(list(gallery.index), self.store))
        report = evaluate_retrieval(
            query_vectors, queries[class_column].astype(str).to_numpy(),
            gallery_vectors, gallery[class_column].astype(str).to_numpy(),
            ks=tuple(ks), map_at=map_at, query_ids=list(queries.index),
            gallery_ids=list(gallery.index), leave_one_out=not use_splits, progress=progress)
        out = Path(out_dir) if out_dir else self.layout.evaluation(loaded.name)
        if not self.read_only or out_dir:
            self._write_eval_outputs(out, report, queries, gallery, query_vectors, gallery_vectors,
                                     class_column, grid_queries, not use_splits)
        return report

    def _write_eval_outputs(self, out: Path, report, queries, gallery, query_vectors,
                            gallery_vectors, class_column: str, grid_queries: int,
                            leave_one_out: bool) -> None:
        from lookalike.evaluate.report import write_result_grid_html
        from lookalike.evaluate.retrieval import neighbours

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "eval.json", json.dumps(report.to_json(), indent=2))
        if grid_queries <= 0 or len(queries) == 0:
            return
        rng = np.random.default_rng(0)
        picks = np.sort(rng.choice(len(queries), size=min(grid_queries, len(queries)),
                                   replace=False))
        ids, scores = neighbours(query_vectors[picks], gallery_vectors, k=5,
                                 query_ids=[queries.index[p] for p in picks] if leave_one_out
                                 else None, gallery_ids=list(gallery.index))
        rows = []
        for row, p in enumerate(picks):
            query = queries.iloc[p]
            rows.append({
                "query": self._grid_cell(queries.index[p], query, class_column),
                "results": [dict(self._grid_cell(g, gallery.loc[g], class_column),
                                 score=float(s),
                                 match=str(gallery.loc[g][class_column]) == str(query[class_column]))
                            for g, s in zip(ids[row], scores[row])],
            })
        write_result_grid_html(out / "results.html", rows,
                               title=f"lookalike evaluation ({class_column})")

    def _grid_cell(self, item_id: str, row, class_column: str) -> dict[str, Any]:
        return {"id": str(item_id), "image": str(self.store.get(str(item_id)).image_path),
                "title": row.get("title") or str(item_id), "label": str(row[class_column])}


    def evaluate_recs(self, method: str = "centroid", *, k: int = 10, holdout: int = 1,
                      **options: Any):  # -> lookalike.recommend.events.RecsReport
        """Replay the ingested event log: hide each shopper's last ``holdout`` events and report
        HR@k, NDCG@k and coverage of ``method``; see
        :func:`lookalike.recommend.events.evaluate_recs` for the options."""
        from lookalike.recommend.events import evaluate_recs

        return evaluate_recs(self, method, k=k, holdout=holdout, **options)

    # ---- clusters and near-duplicates ----------------------------------------------------------
    def clusters(self, k: int = 50, seed: int = 0, *, index: str | None = None,
                 method: str = "faiss", **options: Any):  # -> ClusterReport
        """K-means over the catalogue's embeddings: purity, NMI and a picture grid per cluster,
        saved for browsing and ``per_cluster`` diversity; see
        :func:`lookalike.recommend.clusters.clusters`."""
        from lookalike.recommend.clusters import clusters

        return clusters(self, k=k, seed=seed, index=index, method=method, **options)

    def load_clusters(self, index: str | None = None):  # -> SavedClusters
        """The clusters last saved for index ``index`` (``UnknownNameError`` when none)."""
        from lookalike.recommend.clusters import load_clusters

        return load_clusters(self, index)

    def duplicates(self, method: str = "copies", threshold: float | None = None, *,
                   index: str | None = None, **options: Any):  # -> DuplicateReport
        """Groups of near-duplicate products (saved under ``reports/duplicates-<method>/``);
        see :func:`lookalike.recommend.duplicates.duplicates` for the methods and options."""
        from lookalike.recommend.duplicates import duplicates

        return duplicates(self, method=method, threshold=threshold, index=index, **options)

    def find_duplicates(self, image: Any, method: str = "copies",
                        threshold: float | None = None, *,
                        index: str | None = None) -> list[tuple[str, float]]:
        """Catalogue items that are near-duplicates of one photo (a path, bytes or a PIL
        image), as ``(id, distance)`` closest first. The matcher is kept on this project
        (``caches.duplicate_finders``) until the catalogue changes, so many calls are cheap."""
        from lookalike.recommend.duplicates import DuplicateFinder

        finder = self.caches.duplicate_finders.get_or_make(
            index, lambda: DuplicateFinder(self, index))
        return finder.find(image, method, threshold)

    def duplicate_report(self, method: str = "copies") -> dict[str, Any]:
        """The near-duplicate groups last saved by :meth:`duplicates` with ``method``, as
        JSON (``UnknownNameError`` when there are none)."""
        path = self.layout.duplicates(method) / "groups.json"
        if not path.is_file():
            raise UnknownNameError(f"no duplicate report for {method}; run "
                                   f"`lookalike duplicates --method {method}`")
        return json.loads(path.read_text())


__all__ = ["AnalysisVerbs"]
