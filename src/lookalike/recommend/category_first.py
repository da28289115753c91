"""Category-first search (paper 001): classify the query, then search inside its category.

A linear probe -- scikit-learn ``LogisticRegression`` on an index's embeddings, trained on the
``train`` split -- predicts the query's category. The search then runs with a category filter
(metadata pruning): inside the top-1 category when the probe is confident, inside the top-2 when
those two together are, and over the whole catalogue otherwise. If the chosen categories hold
fewer than ``k`` matching items the rest of the list is filled from the whole catalogue, so a
query never loses results.

The probe is stored as ``weights.safetensors`` (``coef``, ``intercept``) + ``probe.json``
(classes, column, embedder id) under ``<project>/probes/<index>-<column>/`` (a versioned folder
swapped atomically); loading reads JSON and safetensors only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, UnknownNameError
from lookalike.index.base import Filters, Hits, VectorIndex
from lookalike.recommend.contract import Recommender
from lookalike.recommend.results import Recommendation
from lookalike.storage import atomic_write_text, current_version, versioned_folder

PROBE_CONFIG = "probe.json"
PROBE_WEIGHTS = "weights.safetensors"
#: Defaults chosen on the train split (see docs/category-first.md): search only the top-1
#: category when it has at least this probability...
TOP1_CONFIDENCE = 0.5
#: ...else the top-2 categories when together they have at least this much; else everything.
TOP2_CONFIDENCE = 0.7


@dataclass
class CategoryProbe(Recommender):
    """A linear classifier over embeddings: ``softmax(vectors @ coef.T + intercept)``.

    Binary problems keep scikit-learn's single row of ``coef`` and use the logistic function.
    A :class:`~lookalike.recommend.contract.Recommender`: :meth:`fit` (re)trains it on labelled
    rows, :meth:`score` is how sure it is of each row's category.
    """

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    column: str = "category"
    embedder_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.coef = np.ascontiguousarray(self.coef, dtype=np.float32)
        self.intercept = np.ascontiguousarray(self.intercept, dtype=np.float32).reshape(-1)
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        if len(self.classes) < 2 or self.coef.ndim != 2 or self.coef.shape[0] != rows \
                or self.intercept.shape != (rows,):
            raise ModelMismatchError(
                f"category probe: {len(self.classes)} classes do not fit coef {self.coef.shape} "
                f"and intercept {self.intercept.shape}")

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, n_classes]`` (columns in the order of ``classes``)."""
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if x.shape[1] != self.dim:
            raise ModelMismatchError(f"category probe expects {self.dim}-d vectors, got "
                                     f"{x.shape[1]}-d (trained for embedder {self.embedder_id})")
        logits = x @ self.coef.T + self.intercept
        if len(self.classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))
            return np.stack([1.0 - p1, p1], axis=1)
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        return logits / logits.sum(axis=1, keepdims=True)

    def predict(self, vectors: np.ndarray) -> list[str]:
        """The most probable class of each row."""
        return [self.classes[i] for i in self.predict_proba(vectors).argmax(axis=1)]

    @classmethod
    def learn(cls, vectors: np.ndarray, labels: Sequence[Any], *, C: float = 1.0,
              max_iter: int = 300, **fields: Any) -> "CategoryProbe":
        """A probe fitted on ``vectors`` and their ``labels`` (scikit-learn's
        ``LogisticRegression``); ``fields``: column, embedder_id, info."""
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=C, max_iter=max_iter).fit(vectors, np.asarray(labels))
        info = {"C": C, "max_iter": max_iter, "iterations": int(np.max(model.n_iter_)),
                "train_accuracy": float(model.score(vectors, np.asarray(labels))),
                **fields.pop("info", {})}
        return cls(classes=[str(c) for c in model.classes_], coef=model.coef_,
                   intercept=model.intercept_, info=info, **fields)

    def fit(self, vectors: np.ndarray, labels: Sequence[Any] | None = None) -> "CategoryProbe":
        """Retrain on labelled rows, with this probe's C and max_iter."""
        if labels is None:
            raise LookalikeError("a category probe learns from rows with their categories")
        again = self.learn(vectors, labels, C=self.info.get("C", 1.0),
                           max_iter=self.info.get("max_iter", 300), column=self.column,
                           embedder_id=self.embedder_id)
        self.classes, self.coef, self.intercept = again.classes, again.coef, again.intercept
        self.info = {**self.info, **again.info}
        return self

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """How sure the probe is of each row's category (its highest class probability)."""
        return self.predict_proba(vectors).max(axis=1)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``weights.safetensors`` and then ``probe.json`` into ``folder``."""
        from lookalike.models.weights import write_tensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_tensors(folder / PROBE_WEIGHTS, {"coef": self.coef, "intercept": self.intercept})
        atomic_write_text(folder / PROBE_CONFIG, json.dumps(
            {"kind": "linear-probe", "classes": self.classes, "column": self.column,
             "embedder_id": self.embedder_id, "dim": self.dim, "info": self.info},
            indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "CategoryProbe":
        """Read a probe written by :meth:`save` (JSON + safetensors; nothing is unpickled)."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        config_path = folder / PROBE_CONFIG
        if not config_path.is_file() or not (folder / PROBE_WEIGHTS).is_file():
            raise UnknownNameError(f"{folder}: no saved category probe ({PROBE_CONFIG} + "
                                   f"{PROBE_WEIGHTS})")
        config = json.loads(config_path.read_text())
        tensors = load_file(str(folder / PROBE_WEIGHTS))
        return cls(classes=[str(c) for c in config["classes"]], coef=tensors["coef"],
                   intercept=tensors["intercept"], column=config.get("column", "category"),
                   embedder_id=config.get("embedder_id", ""), info=config.get("info", {}))


@dataclass
class CategoryDecision:
    """Where one query is searched: ``scope`` is ``top1``, ``top2`` or ``all``."""

    scope: str
    categories: tuple[str, ...]
    confidence: float
    top: list[tuple[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "categories": list(self.categories),
                "confidence": round(self.confidence, 4),
                "top": [[c, round(p, 4)] for c, p in self.top]}


@dataclass
class CategoryFirstResult:
    """Results of a category-first query and the decision that scoped it."""

    results: list[Recommendation]
    decision: CategoryDecision

    def to_json(self) -> dict[str, Any]:
        return {"results": [r.to_json() for r in self.results],
                "decision": self.decision.to_json()}


def decide(probabilities: np.ndarray, classes: Sequence[str], *,
           top1_confidence: float = TOP1_CONFIDENCE, top2_confidence: float = TOP2_CONFIDENCE,
           max_categories: int = 2) -> CategoryDecision:
    """Scope one query from its class probabilities (see the module docstring).

    ``max_categories=1`` never widens to two categories; ``top1_confidence > 1`` disables the
    top-1 scope, ``top2_confidence > 1`` the top-2 one.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    order = np.argsort(-p, kind="stable")[:3]
    top = [(str(classes[i]), float(p[i])) for i in order]
    if top[0][1] >= top1_confidence:
        return CategoryDecision("top1", (top[0][0],), top[0][1], top)
    if max_categories >= 2 and len(top) > 1 and top[0][1] + top[1][1] >= top2_confidence:
        return CategoryDecision("top2", (top[0][0], top[1][0]), top[0][1] + top[1][1], top)
    return CategoryDecision("all", (), top[0][1], top)


def scoped_filters(filters: Filters | None, decision: CategoryDecision,
                   column: str = "category") -> Filters | None:
    """The user's filters narrowed to the decided categories.

    A category filter the user gave wins: the decision only narrows it when they overlap
    (a user who asked for Sandals never gets a predicted Shoes-only search).
    """
    if not decision.categories:
        return filters
    equals = dict(filters.equals) if filters else {}
    ranges = dict(filters.ranges) if filters else {}
    wanted = decision.categories
    if column in equals:
        overlap = tuple(c for c in wanted if c in equals[column])
        if not overlap:
            return filters
        wanted = overlap
    equals[column] = wanted
    return Filters(equals=equals, ranges=ranges)


def search_vectors(index: VectorIndex, probe: CategoryProbe, vectors: np.ndarray, k: int = 10,
                   filters: Filters | None = None, exclude: Sequence[Sequence[str]] | None = None,
                   *, top1_confidence: float = TOP1_CONFIDENCE,
                   top2_confidence: float = TOP2_CONFIDENCE, max_categories: int = 2,
                   fill: bool = True) -> tuple[list[Hits], list[CategoryDecision]]:
    """Category-first search of many query vectors at once (queries sharing a scope are searched
    in one batch). ``fill`` tops up short in-category lists from the unscoped search."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    probabilities = probe.predict_proba(vectors)
    decisions = [decide(p, probe.classes, top1_confidence=top1_confidence,
                        top2_confidence=top2_confidence, max_categories=max_categories)
                 for p in probabilities]
    groups: dict[tuple[str, ...], list[int]] = {}
    for n, decision in enumerate(decisions):
        groups.setdefault(decision.categories, []).append(n)
    hits: list[Hits] = [Hits([], [])] * len(vectors)
    short: list[int] = []
    for categories, rows in groups.items():
        scoped = scoped_filters(filters, decisions[rows[0]], probe.column)
        found = index.search(vectors[rows], k=k, filters=scoped,
                             exclude=[exclude[r] for r in rows] if exclude else None)
        for row, row_hits in zip(rows, found):
            hits[row] = row_hits
            if categories and len(row_hits) < k:
                short.append(row)
    if fill and short:
        wider = index.search(vectors[short], k=k, filters=filters,
                             exclude=[exclude[r] for r in short] if exclude else None)
        for row, extra in zip(short, wider):
            have = set(hits[row].ids)
            ids, scores = list(hits[row].ids), list(hits[row].scores)
            for item_id, score in zip(extra.ids, extra.scores):
                if len(ids) >= k:
                    break
                if item_id not in have:
                    ids.append(item_id)
                    scores.append(score)
            hits[row] = Hits(ids, scores)
    return hits, decisions


# ---- the project-level verbs ------------------------------------------------------------------
def probe_folder(project, column: str = "category", index: str | None = None) -> Path:
    """Where the probe of ``column`` for index ``index`` lives (a versioned folder)."""
    name = index or project.default_index_name()
    if not name:
        raise UnknownNameError(f"{project.path}: no index yet; run `lookalike index` first")
    return project.layout.probe(f"{name}-{column}")


def train_category_probe(project, *, column: str = "category", index: str | None = None,
                         split: str | None = "train", C: float = 1.0, max_iter: int = 300,
                         min_class_size: int = 2, save: bool = True) -> CategoryProbe:
    """Fit the linear probe on the embeddings of index ``index`` and (by default) save it.

    Training items are the indexed items of ``split`` (all indexed items when the catalogue has
    no such split) with a value in ``column``; classes with fewer than ``min_class_size`` items
    are left out (they can still be found by the whole-catalogue fallback).
    """
    loaded = project.searcher(index)
    frame = project.store.frame()
    if column not in frame.columns:
        raise LookalikeError(f"column {column!r} is not in the catalogue; columns: "
                             f"{', '.join(map(str, frame.columns))}")
    frame = frame[frame.index.isin(set(loaded.hashes)) & frame[column].notna()]
    if split and "split" in frame.columns and (frame["split"] == split).any():
        frame = frame[frame["split"] == split]
    labels = frame[column].astype(str)
    counts = labels.value_counts()
    frame = frame[labels.map(counts).to_numpy() >= min_class_size]
    labels = frame[column].astype(str).to_numpy()
    if len(set(labels)) < 2:
        raise LookalikeError(f"a category probe needs at least two values of {column!r} with "
                             f">= {min_class_size} indexed items each; found {len(set(labels))}")
    vectors = loaded.vectors_of(list(frame.index), project.store)
    started = time.perf_counter()
    probe = CategoryProbe.learn(vectors, labels, C=C, max_iter=max_iter, column=column,
                                embedder_id=loaded.embedder.embedder_id,
                                info={"index": loaded.name, "split": split,
                                      "n_train": int(len(labels))})
    probe.info["fit_seconds"] = round(time.perf_counter() - started, 2)
    if save:
        project.require_writable("train a category probe")
        with versioned_folder(probe_folder(project, column, loaded.name)) as staging:
            probe.save(staging)
    return probe


def load_category_probe(project, column: str = "category",
                        index: str | None = None) -> CategoryProbe:
    """The saved probe for ``column`` on index ``index``, checked against the index's embedder."""
    loaded = project.searcher(index)
    folder = current_version(probe_folder(project, column, loaded.name))
    if folder is None:
        raise UnknownNameError(f"no category probe for {column!r} on index {loaded.name!r}; "
                               f"run `lookalike category-probe --column {column}` first")
    probe = CategoryProbe.load(folder)
    if probe.embedder_id and probe.embedder_id != loaded.embedder.embedder_id:
        raise ModelMismatchError(f"{folder}: probe trained on embedder {probe.embedder_id}, the "
                                 f"index now uses {loaded.embedder.embedder_id}; retrain it")
    return probe


def category_first_search(project, image: Any = None, *, item_id: str | None = None,
                          k: int = 5, filters: Filters | None = None, index: str | None = None,
                          probe: CategoryProbe | None = None, column: str = "category",
                          top1_confidence: float = TOP1_CONFIDENCE,
                          top2_confidence: float = TOP2_CONFIDENCE,
                          max_categories: int = 2) -> CategoryFirstResult:
    """Search by photo (``image``) or more-like-this (``item_id``) inside the predicted category.

    Returns the results and the :class:`CategoryDecision` (scope, categories, confidence).
    """
    if (image is None) == (item_id is None):
        raise LookalikeError("category-first search needs exactly one of a photo or an item id")
    loaded = project.searcher(index)
    if item_id is not None:
        vector = loaded.vector_of(str(item_id), project.store)
        exclude = [[str(item_id)]]
    else:
        vector = project.embed_query(image, index=index)
        exclude = None
    probe = probe or load_category_probe(project, column, loaded.name)
    hits, decisions = search_vectors(loaded.index, probe, vector[None, :], k, filters, exclude,
                                     top1_confidence=top1_confidence,
                                     top2_confidence=top2_confidence,
                                     max_categories=max_categories)
    return CategoryFirstResult(project.recommendations(hits[0].ids, hits[0].scores),
                               decisions[0])


def probe_accuracy(probe: CategoryProbe, vectors: np.ndarray,
                   labels: Sequence[str]) -> Mapping[str, float]:
    """Top-1 and top-2 accuracy of the probe on labelled vectors."""
    probabilities = probe.predict_proba(vectors)
    order = np.argsort(-probabilities, axis=1)[:, :2]
    classes = np.asarray(probe.classes)
    labels = np.asarray([str(x) for x in labels])
    top1 = classes[order[:, 0]] == labels
    top2 = top1 | (classes[order[:, 1]] == labels)
    return {"top1_accuracy": float(top1.mean()), "top2_accuracy": float(top2.mean())}


__all__ = ["CategoryProbe", "CategoryDecision", "CategoryFirstResult", "decide", "scoped_filters",
           "search_vectors", "train_category_probe", "load_category_probe",
           "category_first_search", "probe_accuracy", "probe_folder"]
