"""Near-duplicate products: the same photo re-encoded, resized, slightly cropped or brightened.

Methods, none of them with an N x N matrix:

* ``copies`` (the default; :mod:`lookalike.catalogue.copies`): candidate pairs from perceptual-hash neighbours and,
  when the project has an image index, embedding neighbours; each candidate is verified by
  aligning the two photos (scale, shift, brightness) and comparing fine texture and colour
  (:mod:`lookalike.catalogue.copy_verify`). Robust when edits are combined (crop + resize + brightness + JPEG), and
  it tells a copy from a look-alike product. ``threshold`` is the smallest texture correlation.
* ``phash``: the 64-bit perceptual hash of every image in a FAISS binary index; pairs within a
  Hamming radius come from a range search (multi-hash, exact by the pigeonhole rule up to 11
  bits; larger radii by brute force). Grey-scale: it pairs a navy tie with a maroon one.
* ``phash+colour``: the phash pairs whose 8 x 8 CIELAB colour grids also agree (largest cell
  difference, after removing the overall lightness shift, at most ``max_colour_difference``).
* ``embedding``: the project's vector index; pairs are neighbours (the ``neighbours`` nearest)
  whose cosine is at least the threshold.

Pairs are joined into groups (connected components of the sparse pair graph). Fingerprints
(hash, colour grid, thumbnail) are cached per content hash (:mod:`lookalike.catalogue.fingerprints`).
:func:`find_duplicate_of` checks one incoming image against the catalogue;
:class:`DuplicateFinder` does the same for many, keeping its matchers between calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.index.base import VectorIndex
from lookalike.catalogue.copies import CopyMatcher, CopySettings, NeighboursOf, copy_pairs
from lookalike.recommend.copy_descriptors import (catalogue_descriptors, descriptor_matcher,
                                                  descriptor_model)
from lookalike.catalogue.copy_verify import MIN_TEXTURE
from lookalike.catalogue.fingerprints import (  # noqa: F401  (re-exported)
    COLOUR_GRID, HASH_BITS, MAX_COLOUR_DIFFERENCE, PHASH_DIR, PHASH_THRESHOLD, Fingerprints,
    PHashMatcher, binary_index, catalogue_fingerprints, catalogue_phashes, check_radius,
    colour_difference, colour_grid, fingerprint, hamming, hamming_pairs, phash_code, phash_codes)
from lookalike.storage import atomic_write_text, current_version

METHODS = ("copies", "phash+colour", "phash", "embedding")
DEFAULT_METHOD = "copies"
#: Defaults chosen with benchmarks/dedup_bench.py (see docs/clusters-and-duplicates.md).
DEFAULT_THRESHOLDS = {"copies": MIN_TEXTURE, "phash": PHASH_THRESHOLD, "embedding": 0.97,
                      "phash+colour": PHASH_THRESHOLD}


# ---- grouping -------------------------------------------------------------------------------
def group_pairs(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """Connected components (of size >= 2) of the graph whose edges are ``pairs[:, :2]``,
    largest first; each as sorted row numbers."""
    if not len(pairs):
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    groups = [np.flatnonzero(component == c) for c in np.flatnonzero(sizes >= 2)]
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


@dataclass
class DuplicateGroup:
    """Items that are near-duplicates of each other (directly or through a chain)."""

    ids: list[str]
    distance: float  # the largest pair distance inside the group (bits, or 1 - cosine)

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "distance": round(float(self.distance), 4)}


@dataclass
class DuplicateReport:
    """The near-duplicate groups of a catalogue under one method and threshold."""

    method: str
    threshold: float
    n_items: int
    n_pairs: int
    groups: list[DuplicateGroup] = field(default_factory=list)
    seconds: float = 0.0
    folder: Path | None = None

    @property
    def n_duplicate_items(self) -> int:
        return sum(len(g.ids) for g in self.groups)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold, "n_items": self.n_items,
                "n_pairs": self.n_pairs, "n_groups": len(self.groups),
                "n_duplicate_items": self.n_duplicate_items, "seconds": round(self.seconds, 3),
                "groups": [g.to_json() for g in self.groups],
                "folder": str(self.folder) if self.folder else None}


def _groups(ids: Sequence[str], pairs: np.ndarray) -> list[DuplicateGroup]:
    groups = group_pairs(len(ids), pairs)
    if not groups:
        return []
    member_of = np.full(len(ids), -1)
    for g, rows in enumerate(groups):
        member_of[rows] = g
    worst = np.zeros(len(groups))
    np.maximum.at(worst, member_of[pairs[:, 0].astype(np.int64)], pairs[:, 2].astype(float))
    return [DuplicateGroup([ids[r] for r in rows], float(worst[g]))
            for g, rows in enumerate(groups)]


# ---- the verbs ------------------------------------------------------------------------------
def duplicates(project, method: str = DEFAULT_METHOD, threshold: float | None = None, *,
               max_colour_difference: float = MAX_COLOUR_DIFFERENCE, index: str | None = None,
               neighbours: int | None = None, save: bool = True,
               grid_groups: int = 40) -> DuplicateReport:
    """Groups of near-duplicate catalogue items (see the module docstring for the methods).

    ``threshold``: the smallest texture correlation for ``copies`` (default 0.94), the largest
    Hamming distance in bits for ``phash`` and ``phash+colour`` (default 8 of 64), the smallest
    cosine for ``embedding`` (default 0.97). ``copies`` uses the ``index`` (default: the
    project's) for candidates when there is one, and hashes alone otherwise. With ``save`` (and a
    writable project) writes ``groups.json`` and ``groups.html`` (a picture grid of the largest
    groups) into ``<project>/reports/duplicates-<method>/``.
    """
    method = _check_method(method)
    threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    started = time.perf_counter()
    if method == "copies":
        ids, pairs = _copy_pairs(project, float(threshold), index, neighbours, save)
    elif method.startswith("phash"):
        radius = check_radius(threshold)
        prints = catalogue_fingerprints(project, save=save)
        ids = prints.ids
        pairs = hamming_pairs(prints.codes, radius)
        if method == "phash+colour":
            pairs = pairs[pair_colour_differences(prints.colours, pairs) <= max_colour_difference]
    else:
        if not 0.0 < float(threshold) <= 1.0:
            raise LookalikeError(f"embedding threshold is a cosine in (0, 1], not {threshold}")
        ids, pairs = embedding_pairs(project, float(threshold), index=index,
                                     neighbours=neighbours or 10)
    report = DuplicateReport(method=method, threshold=float(threshold), n_items=len(ids),
                             n_pairs=len(pairs), groups=_groups(ids, pairs))
    report.seconds = time.perf_counter() - started
    if save and not project.read_only:
        out = project.layout.duplicates(method)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "groups.json", json.dumps(report.to_json(), indent=2))
        write_duplicate_grid(out / "groups.html", project, report, grid_groups)
        report.folder = out
    return report


def _copy_pairs(project, threshold: float, index: str | None, neighbours: int | None,
                save: bool) -> tuple[list[str], np.ndarray]:
    settings = CopySettings(min_texture=threshold)
    if neighbours is not None:
        settings = CopySettings(min_texture=threshold, neighbours=neighbours)
    settings.check()
    prints = catalogue_fingerprints(project, save=save)
    model = descriptor_model()
    if model is not None:
        vectors = catalogue_descriptors(project, model, prints.ids)
        return prints.ids, copy_pairs(prints, settings, descriptors=vectors)[0]
    extra = None
    if index or project.default_index_name():
        indexed, found = embedding_pairs(project, settings.min_cosine, index=index,
                                         neighbours=settings.neighbours)
        row = {item_id: n for n, item_id in enumerate(prints.ids)}
        extra = np.asarray([(row[indexed[int(i)]], row[indexed[int(j)]]) for i, j, _ in found
                            if indexed[int(i)] in row and indexed[int(j)] in row],
                           dtype=np.int64).reshape(-1, 2)
    pairs, _ = copy_pairs(prints, settings, extra)
    return prints.ids, pairs


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise UnknownNameError(f"unknown duplicate method {method!r}; use one of "
                               f"{', '.join(METHODS)}")
    return method


def pair_colour_differences(colours: np.ndarray, pairs: np.ndarray,
                            batch: int = 65536) -> np.ndarray:
    """:func:`colour_difference` of each pair ``(i, j, ...)`` of colour grids."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        out[start:start + len(chunk)] = colour_difference(colours[chunk[:, 0].astype(np.int64)],
                                                          colours[chunk[:, 1].astype(np.int64)])
    return out


def pair_cosines(vectors: np.ndarray, pairs: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Cosine of each pair ``(i, j, ...)`` of unit rows, one dot product per pair."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        a = vectors[chunk[:, 0].astype(np.int64)]
        b = vectors[chunk[:, 1].astype(np.int64)]
        out[start:start + len(chunk)] = np.einsum("ij,ij->i", a, b)
    return out


def embedding_pairs(project, threshold: float, *, index: str | None = None,
                    neighbours: int = 10) -> tuple[list[str], np.ndarray]:
    """``(ids, pairs)`` over the indexed items of ``index`` (see :func:`vector_pairs`)."""
    loaded = project.searcher(index)
    ids = [i for i in project.store.ids() if i in loaded.hashes]
    return ids, vector_pairs(loaded.index, ids,
                             lambda chunk: loaded.vectors_of(chunk, project.store),
                             threshold, neighbours=neighbours)


def vector_pairs(index: VectorIndex, ids: Sequence[str], vectors_of: Any, threshold: float, *,
                 neighbours: int = 10, batch: int = 2048) -> np.ndarray:
    """Pairs ``(i, j, 1 - cosine)`` (row numbers into ``ids``, ``i < j``) of items whose cosine
    is at least ``threshold``, found as each item's ``neighbours`` nearest in ``index``: a range
    search bounded at ``neighbours`` hits per item (groups still join through chains).
    ``vectors_of(chunk_of_ids)`` returns the items' vectors."""
    position = {item_id: n for n, item_id in enumerate(ids)}
    found_pairs: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), batch):
        chunk = list(ids[start:start + batch])
        hits = index.search(np.asarray(vectors_of(chunk)), k=neighbours + 1,
                            exclude=[[i] for i in chunk])
        for row, found in enumerate(hits):
            i = start + row
            for other, score in zip(found.ids, found.scores):
                if score < threshold:
                    break  # best first: the rest are further away
                j = position.get(other)
                if j is not None and j != i:
                    found_pairs[(min(i, j), max(i, j))] = 1.0 - float(score)
    if not found_pairs:
        return np.zeros((0, 3))
    return np.asarray([(i, j, d) for (i, j), d in sorted(found_pairs.items())])


def write_duplicate_grid(path: Path, project, report: DuplicateReport, limit: int = 40) -> Path:
    """One row per group (largest first): its items with titles and categories."""
    from lookalike.evaluate.report import write_result_grid_html

    rows = []
    groups = report.groups[:limit]
    items = project.store.find([i for g in groups for i in g.ids])
    for group in groups:
        cells = [{"id": i, "image": str(items[i].image_path), "title": items[i].title or i,
                  "label": items[i].category or ""} for i in group.ids[:12] if i in items]
        if cells:
            rows.append({"query": {**cells[0], "title": f"{len(group.ids)} items: "
                                                        f"{cells[0]['title']}"},
                         "results": cells[1:]})
    unit = {"embedding": "1 - cosine", "copies": "1 - texture"}.get(report.method, "bits")
    return write_result_grid_html(
        path, rows, title=f"near-duplicate groups ({report.method}, threshold {report.threshold:g})",
        note=f"{len(report.groups)} groups, {report.n_duplicate_items} items; largest pair "
             f"distance per group in {unit}.",
        summary={"groups": len(report.groups), "items in groups": report.n_duplicate_items,
                 "pairs": report.n_pairs})



class DuplicateFinder:
    """Checks incoming images against one project's catalogue, keeping the matcher it built
    (one per method and threshold) until the catalogue or its fingerprints change."""

    def __init__(self, project, index: str | None = None) -> None:
        self.project = project
        self.index = index
        self._matchers: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def find(self, image: Any, method: str = DEFAULT_METHOD, threshold: float | None = None, *,
             max_colour_difference: float = MAX_COLOUR_DIFFERENCE) -> list[tuple[str, float]]:
        """See :func:`find_duplicate_of`."""
        from lookalike.catalogue.images import as_image

        method = _check_method(method)
        picture = as_image(image)
        threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
        if method == "embedding":
            loaded = self.project.searcher(self.index)
            vector = loaded.embedder.embed_one(picture)
            hits = loaded.index.search(vector[None, :], k=10)[0]
            return [(i, 1.0 - s) for i, s in zip(hits.ids, hits.scores) if s >= float(threshold)]
        return self.matcher(method, threshold, max_colour_difference).find(picture)

    def matcher(self, method: str, threshold: float,
                max_colour_difference: float = MAX_COLOUR_DIFFERENCE) -> Any:
        """The :class:`CopyMatcher` or :class:`PHashMatcher` of the catalogue as it is now."""
        folder = current_version(self.project.path / PHASH_DIR)
        key = (method, float(threshold), max_colour_difference, str(folder),
               len(self.project.store))
        with self._lock:
            if key not in self._matchers:
                self._matchers.clear()  # only the latest state is worth keeping
                self._matchers[key] = self._build(method, threshold, max_colour_difference)
            return self._matchers[key]

    def _build(self, method: str, threshold: float, max_colour_difference: float) -> Any:
        prints = catalogue_fingerprints(self.project)
        if method == "copies":
            settings = CopySettings(min_texture=float(threshold))
            return descriptor_matcher(self.project, prints, settings) or \
                CopyMatcher(prints, settings, index_neighbours(self.project, self.index))
        colour = max_colour_difference if method == "phash+colour" else None
        return PHashMatcher(prints, check_radius(threshold), colour)


def find_duplicate_of(project, image: Any, method: str = DEFAULT_METHOD,
                      threshold: float | None = None, *,
                      max_colour_difference: float = MAX_COLOUR_DIFFERENCE,
                      index: str | None = None) -> list[tuple[str, float]]:
    """Catalogue items that are near-duplicates of ``image`` (path, bytes or PIL image), as
    ``(id, distance)`` closest first: ``1 - texture`` for ``copies``, Hamming bits for
    ``phash`` / ``phash+colour``, ``1 - cosine`` for ``embedding``. An empty list means no
    duplicate. For many images keep one :class:`DuplicateFinder` instead."""
    return DuplicateFinder(project, index).find(image, method, threshold,
                                                max_colour_difference=max_colour_difference)


def index_neighbours(project, index: str | None = None,
                     settings: CopySettings = CopySettings()) -> NeighboursOf | None:
    """``neighbours_of(image)`` for :class:`CopyMatcher`: the ids of the image's nearest items in
    the project's image index ``index`` (default: the project's), or None without an index."""
    if not (index or project.default_index_name()):
        return None

    def neighbours_of(image: Image.Image) -> list[str]:
        loaded = project.searcher(index)
        hits = loaded.index.search(loaded.embedder.embed_one(image)[None, :],
                                   k=settings.neighbours)[0]
        return [i for i, s in zip(hits.ids, hits.scores) if s >= settings.min_cosine]

    return neighbours_of


__all__ = ["phash_code", "phash_codes", "colour_grid", "colour_difference", "fingerprint",
           "Fingerprints", "hamming", "hamming_pairs", "binary_index", "group_pairs",
           "DuplicateGroup", "DuplicateReport", "catalogue_fingerprints", "catalogue_phashes",
           "duplicates", "embedding_pairs", "vector_pairs", "pair_cosines",
           "pair_colour_differences", "find_duplicate_of", "DuplicateFinder", "index_neighbours",
           "PHashMatcher", "CopyMatcher", "CopySettings", "write_duplicate_grid", "METHODS",
           "DEFAULT_METHOD", "DEFAULT_THRESHOLDS", "MAX_COLOUR_DIFFERENCE"]
