"""Catalogue clusters (paper 003): K-means over an index's embeddings.

:func:`clusters` groups every indexed item with seeded, deterministic K-means (FAISS
``faiss.Kmeans``, spherical, or scikit-learn ``MiniBatchKMeans``), scores the grouping against
catalogue labels (purity and NMI), writes a picture grid of each cluster's most central items and
saves the assignment into the project::

    <project>/clusters/<index>/CURRENT -> v000001/
        assignments.json     {"ids": [...], "clusters": [...]}  (one cluster number per item)
        centroids.safetensors
        report.json          k, seed, method, sizes, purity, NMI, central items per cluster
        clusters.html        rows of thumbnails, one row per cluster, most central first

:func:`diversify` keeps at most ``n`` results per cluster, and :func:`diverse_similar` /
:func:`diverse_search` apply it to more-like-this and search by photo.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.index.base import Filters
from lookalike.recommend.contract import Recommender
from lookalike.recommend.results import Recommendation
from lookalike.storage import atomic_write_text, current_version, versioned_folder

METHODS = ("faiss", "minibatch")
#: Label columns purity and NMI are reported against (those the catalogue has).
LABEL_COLUMNS = ("category", "sub_category")


def kmeans(vectors: np.ndarray, k: int, *, seed: int = 0, method: str = "faiss",
           niter: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Cluster unit rows into ``k`` groups; returns ``(labels [n] int64, centroids [k, d])``.

    ``faiss``: spherical K-means (centroids re-normalised, so cosine is the distance) with
    FAISS's k-means++-free random init drawn from ``seed``. ``minibatch``: scikit-learn
    ``MiniBatchKMeans(random_state=seed)``. Both are deterministic for a given seed and input.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise LookalikeError(f"k-means: k={k} must be between 1 and the number of items ({n})")
    if method == "faiss":
        import faiss

        model = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed), spherical=True,
                             verbose=False, max_points_per_centroid=max(256, -(-n // k)))
        model.train(x)
        centroids = np.ascontiguousarray(model.centroids, dtype=np.float32)
        _, labels = model.index.search(x, 1)
        return labels[:, 0].astype(np.int64), centroids
    if method == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        model = MiniBatchKMeans(n_clusters=k, random_state=int(seed), n_init=3,
                                batch_size=4096, max_iter=max(niter, 20))
        labels = model.fit_predict(x).astype(np.int64)
        centroids = model.cluster_centers_.astype(np.float32)
        norms = np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        return labels, np.ascontiguousarray(centroids / norms)
    raise UnknownNameError(f"unknown k-means method {method!r}; use one of {', '.join(METHODS)}")


@dataclass
class ClusterModel(Recommender):
    """K-means as a :class:`~lookalike.recommend.contract.Recommender`: :meth:`fit` groups rows
    (:func:`kmeans`), :meth:`score` is each row's cosine to its nearest centre, so :meth:`rank`
    gives the most typical rows and :meth:`assign` each row's cluster."""

    k: int
    seed: int = 0
    method: str = "faiss"
    niter: int = 25
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def fit(self, vectors: np.ndarray, labels: Sequence[Any] | None = None) -> "ClusterModel":
        """Cluster ``vectors`` (``labels`` are not used: K-means learns without them)."""
        self.labels, self.centroids = kmeans(vectors, self.k, seed=self.seed,
                                             method=self.method, niter=self.niter)
        return self

    def score(self, vectors: np.ndarray) -> np.ndarray:
        if not len(self.centroids):
            raise LookalikeError("cluster model: fit it before scoring")
        return (np.asarray(vectors, dtype=np.float32) @ self.centroids.T).max(axis=1)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The nearest centre of each row."""
        return (np.asarray(vectors, dtype=np.float32) @ self.centroids.T).argmax(axis=1)


def purity(clusters_of: Sequence[int] | np.ndarray, classes: Sequence[Any]) -> float:
    """Share of items whose class is their cluster's most common class (1.0 = pure clusters)."""
    import pandas as pd

    table = pd.crosstab(np.asarray(clusters_of), np.asarray(classes, dtype=object))
    return float(table.max(axis=1).sum() / max(1, len(clusters_of)))


def nmi(clusters_of: Sequence[int] | np.ndarray, classes: Sequence[Any]) -> float:
    """Normalised mutual information between clusters and classes (scikit-learn)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(classes, dtype=str),
                                              np.asarray(clusters_of)))


def central_members(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray,
                    per_cluster: int = 8) -> list[list[int]]:
    """Per cluster, the row numbers of its members closest to the centroid (best first)."""
    x = np.asarray(vectors, dtype=np.float32)
    closeness = np.einsum("ij,ij->i", x, centroids[labels])  # one dot per item, not N x k
    out: list[list[int]] = []
    for cluster in range(len(centroids)):
        members = np.flatnonzero(labels == cluster)
        best = members[np.argsort(-closeness[members], kind="stable")[:per_cluster]]
        out.append(best.tolist())
    return out


@dataclass
class ClusterReport:
    """One K-means run over an index: the assignment, its quality and where it was saved."""

    index: str
    k: int
    seed: int
    method: str
    ids: list[str]
    labels: np.ndarray
    centroids: np.ndarray
    sizes: list[int]
    purity: dict[str, float] = field(default_factory=dict)
    nmi: dict[str, float] = field(default_factory=dict)
    central: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0
    folder: Path | None = None

    def cluster_of(self) -> dict[str, int]:
        """id -> cluster number."""
        return dict(zip(self.ids, self.labels.tolist()))

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "k": self.k, "seed": self.seed, "method": self.method,
                "n_items": len(self.ids), "sizes": self.sizes, "purity": self.purity,
                "nmi": self.nmi, "central": self.central, "seconds": round(self.seconds, 3),
                "folder": str(self.folder) if self.folder else None}


def clusters(project, k: int = 50, seed: int = 0, *, index: str | None = None,
             method: str = "faiss", niter: int = 25, label_columns: Sequence[str] = LABEL_COLUMNS,
             grid_per_cluster: int = 10, grid_clusters: int | None = None,
             save: bool = True) -> ClusterReport:
    """K-means over every item of index ``index``; scored, pictured and (by default) saved.

    ``grid_clusters`` limits the clusters drawn in ``clusters.html`` (largest first; all when
    None). Saving needs a writable project.
    """
    loaded = project.searcher(index)
    indexed = set(loaded.hashes)
    frame = project.store.frame()
    frame = frame[frame.index.isin(indexed)]  # catalogue order, so runs are reproducible
    ids = [str(i) for i in frame.index]
    if not ids:
        raise LookalikeError(f"index {loaded.name!r} holds no catalogue items to cluster")
    vectors = loaded.vectors_of(ids, project.store)
    started = time.perf_counter()
    model = ClusterModel(k, seed=seed, method=method, niter=niter).fit(vectors)
    labels, centroids = model.labels, model.centroids
    seconds = time.perf_counter() - started
    sizes = np.bincount(labels, minlength=k).tolist()
    report = ClusterReport(index=loaded.name, k=k, seed=seed, method=method, ids=ids,
                           labels=labels, centroids=centroids, sizes=sizes, seconds=seconds)
    for column in label_columns:
        if column in frame.columns and frame[column].notna().any():
            known = frame[column].notna().to_numpy()
            classes = frame[column][known].astype(str).to_numpy()
            report.purity[column] = purity(labels[known], classes)
            report.nmi[column] = nmi(labels[known], classes)
    central = central_members(vectors, labels, centroids, grid_per_cluster)
    report.central = [[ids[r] for r in rows] for rows in central]
    if save:
        project.require_writable("save clusters")
        with versioned_folder(project.layout.clusters(loaded.name)) as staging:
            _save(staging, report)
            write_cluster_grid(staging / "clusters.html", report, frame, grid_clusters)
        report.folder = current_version(project.layout.clusters(loaded.name))
    return report


def _save(folder: Path, report: ClusterReport) -> None:
    from lookalike.models.weights import write_tensors

    write_tensors(folder / "centroids.safetensors",
                  {"centroids": np.ascontiguousarray(report.centroids)})
    atomic_write_text(folder / "assignments.json",
                      json.dumps({"ids": report.ids, "clusters": report.labels.tolist()}))
    atomic_write_text(folder / "report.json", json.dumps(report.to_json(), indent=2))


def write_cluster_grid(path: Path, report: ClusterReport, frame, limit: int | None = None,
                       label_column: str = "category") -> Path:
    """An HTML page with one row per cluster: its most central items, labelled with their
    category; the row's "query" cell is the most central item itself."""
    from lookalike.evaluate.report import write_result_grid_html

    order = sorted(range(report.k), key=lambda c: -report.sizes[c])[:limit or report.k]
    column = label_column if label_column in frame.columns else None
    rows = []
    for cluster in order:
        members = report.central[cluster]
        if not members:
            continue
        top_label = None
        if column:
            labels = frame.loc[members, column].astype(str)
            top_label = labels.mode().iloc[0] if len(labels) else None
        cells = [{"id": m, "image": str(frame.loc[m, "image_path"]),
                  "title": _text(frame.loc[m, "title"]) or m,
                  "label": str(frame.loc[m, column]) if column else "",
                  "match": (str(frame.loc[m, column]) == top_label) if column else None}
                 for m in members]
        # The first cell stands for the cluster; its label is the majority category so the
        # page's "same label as the query" frames read as "in the cluster's main category".
        rows.append({"query": {**cells[0], "match": None,
                               "title": f"cluster {cluster} ({report.sizes[cluster]} items)",
                               "label": top_label or ""},
                     "results": cells[1:]})
    summary = {f"purity {c}": v for c, v in report.purity.items()}
    summary.update({f"NMI {c}": v for c, v in report.nmi.items()})
    return write_result_grid_html(
        path, rows, title=f"lookalike clusters: k={report.k}, index {report.index}",
        note="Each row is one cluster, largest first: its items closest to the centroid. "
             "Green = the cluster's most common category.", summary=summary)


def _text(value: Any) -> str:
    """A cell value as text; missing values (None, NaN) become ''."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


@dataclass
class SavedClusters:
    """A saved assignment: id -> cluster, the centroids and the run's report."""

    cluster_of: dict[str, int]
    centroids: np.ndarray
    report: dict[str, Any]
    folder: Path


def load_clusters(project, index: str | None = None) -> SavedClusters:
    """The clusters last saved for index ``index``."""
    from safetensors.numpy import load_file

    name = index or project.default_index_name()
    if not name:
        raise UnknownNameError(f"{project.path}: no index yet; run `lookalike index` first")
    folder = current_version(project.layout.clusters(name))
    if folder is None:
        raise UnknownNameError(f"no clusters saved for index {name!r}; run `lookalike clusters`")
    data = json.loads((folder / "assignments.json").read_text())
    return SavedClusters(cluster_of=dict(zip(data["ids"], data["clusters"])),
                         centroids=load_file(str(folder / "centroids.safetensors"))["centroids"],
                         report=json.loads((folder / "report.json").read_text()), folder=folder)


def diversify(results: Sequence[Recommendation], cluster_of: Mapping[str, int],
              per_cluster: int = 2, k: int | None = None) -> list[Recommendation]:
    """Keep ranking order but at most ``per_cluster`` results from any one cluster (an item the
    assignment does not know counts as a cluster of its own); at most ``k`` results."""
    if per_cluster < 1:
        raise LookalikeError(f"per_cluster must be at least 1, not {per_cluster}")
    taken: dict[Any, int] = {}
    out = []
    for result in results:
        cluster = cluster_of.get(result.id, ("unclustered", result.id))
        if taken.get(cluster, 0) >= per_cluster:
            continue
        taken[cluster] = taken.get(cluster, 0) + 1
        out.append(result)
        if k is not None and len(out) >= k:
            break
    return out


def _diverse(fetch: Callable[[int], list[Recommendation]], cluster_of: Mapping[str, int],
             k: int, per_cluster: int, limit: int) -> list[Recommendation]:
    """Fetch ever longer ranked lists until ``k`` diverse results are found or none remain."""
    want = max(4 * k, 50)
    while True:
        ranked = fetch(min(want, limit))
        picked = diversify(ranked, cluster_of, per_cluster, k)
        if len(picked) >= k or len(ranked) < min(want, limit) or want >= limit:
            return picked
        want *= 4


def diverse_similar(project, item_id: str, k: int = 10, per_cluster: int = 2,
                    filters: Filters | None = None, *, index: str | None = None,
                    clusters_: SavedClusters | None = None) -> list[Recommendation]:
    """More like ``item_id``, at most ``per_cluster`` results from any one cluster."""
    saved = clusters_ or load_clusters(project, index)
    size = len(project.searcher(index).index)
    return _diverse(lambda n: project.similar(item_id, n, filters, index=index),
                    saved.cluster_of, k, per_cluster, size)


def diverse_search(project, image: Any, k: int = 10, per_cluster: int = 2,
                   filters: Filters | None = None, *, index: str | None = None,
                   clusters_: SavedClusters | None = None) -> list[Recommendation]:
    """Search by photo, at most ``per_cluster`` results from any one cluster."""
    saved = clusters_ or load_clusters(project, index)
    loaded = project.searcher(index)
    vector = project.embed_query(image, index=index)

    def fetch(n: int) -> list[Recommendation]:
        hits = loaded.index.search(vector[None, :], k=n, filters=filters)[0]
        return project.recommendations(hits.ids, hits.scores)

    return _diverse(fetch, saved.cluster_of, k, per_cluster, len(loaded.index))


__all__ = ["kmeans", "purity", "nmi", "central_members", "clusters", "ClusterReport",
           "SavedClusters", "load_clusters", "diversify", "diverse_similar", "diverse_search",
           "write_cluster_grid"]
