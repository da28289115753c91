"""Near-duplicate products: the same photo re-encoded, resized, slightly cropped or brightened.

Methods, none of them with an N x N matrix:

* ``phash``: the 64-bit perceptual hash of every image (the ImageHash package) in a FAISS binary
  index; pairs within a Hamming radius come from a range search. ``IndexBinaryMultiHash``
  (4 tables of 16 bits, probing up to ``nflip`` flipped bits per table) is exact by the pigeonhole
  rule up to ``4 * (nflip + 1) - 1`` bits, so it answers radii up to 11 without a scan; larger
  radii use the brute-force ``IndexBinaryFlat``. The hash is grey-scale: on a catalogue of
  products shot the same way on white it pairs a navy tie with a maroon one.
* ``phash+colour`` (the default): the phash pairs whose 8 x 8 CIELAB colour grids also agree
  (largest cell difference, after removing the overall lightness shift, at most
  ``max_colour_difference`` Delta-E). Cheap, and independent of the index's embedder.
* ``embedding``: the project's vector index; pairs are neighbours (the ``neighbours`` nearest)
  whose cosine is at least the threshold -- a range search bounded at ``neighbours`` hits per item.

Pairs are joined into groups (connected components of the sparse pair graph). Fingerprints
(hash + colour grid) are kept per content hash under ``<project>/duplicates/phash/`` (a
versioned folder: ``codes.npy``, ``colours.npy``, ``keys.json``) so later runs only look at new
images. :func:`find_duplicate_of` checks one incoming image against the catalogue (for ingest),
and :class:`PHashMatcher` does the same for a stream of images.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.index.base import VectorIndex
from lookalike.storage import atomic_write_bytes, atomic_write_text, current_version, versioned_folder

METHODS = ("phash+colour", "phash", "embedding")
DEFAULT_METHOD = "phash+colour"
PHASH_DIR = Path("duplicates") / "phash"
HASH_BITS = 64
#: Defaults chosen with benchmarks/dedup_bench.py (see docs/clusters-and-duplicates.md).
DEFAULT_THRESHOLDS = {"phash": 8, "embedding": 0.97, "phash+colour": 8}
#: The largest colour-grid difference (CIELAB Delta-E of the worst cell) of a ``phash+colour`` pair.
MAX_COLOUR_DIFFERENCE = 12.0
COLOUR_GRID = 8
_MULTIHASH_TABLES, _MULTIHASH_BITS = 4, 16


# ---- hashing --------------------------------------------------------------------------------
def phash_code(image: Image.Image) -> np.ndarray:
    """The 64-bit DCT perceptual hash of one image as 8 packed bytes (uint8)."""
    import imagehash

    bits = imagehash.phash(image.convert("RGB"), hash_size=8).hash.reshape(-1)
    return np.packbits(bits.astype(np.uint8))


def phash_codes(images: Iterable[Image.Image]) -> np.ndarray:
    """Perceptual hashes of many images, ``[n, 8]`` uint8."""
    codes = [phash_code(image) for image in images]
    return np.stack(codes) if codes else np.zeros((0, HASH_BITS // 8), dtype=np.uint8)


def colour_grid(image: Image.Image, size: int = COLOUR_GRID) -> np.ndarray:
    """The image averaged down to ``size x size`` cells, in CIELAB (``[size * size, 3]``)."""
    from skimage.color import rgb2lab

    small = image.convert("RGB").resize((size, size), Image.Resampling.BOX)
    return rgb2lab(np.asarray(small, dtype=np.float32) / 255.0).reshape(-1, 3).astype(np.float16)


def colour_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Worst-cell Delta-E between colour grids (broadcasting over leading axes), after removing
    each grid's mean lightness so a global brightness change does not count."""
    a = np.asarray(a, dtype=np.float32).copy()
    b = np.asarray(b, dtype=np.float32).copy()
    a[..., 0] -= a[..., 0].mean(axis=-1, keepdims=True)
    b[..., 0] -= b[..., 0].mean(axis=-1, keepdims=True)
    return np.linalg.norm(a - b, axis=-1).max(axis=-1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between packed codes (broadcasting over leading axes)."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def binary_index(codes: np.ndarray, radius: int):
    """A FAISS binary index over ``codes`` that answers range searches up to ``radius`` bits
    exactly (multi-hash when the pigeonhole rule allows, else brute force)."""
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    nflip = -(-(radius + 1) // _MULTIHASH_TABLES) - 1  # pigeonhole: exact up to 4*(nflip+1)-1
    if nflip <= 2:
        index = faiss.IndexBinaryMultiHash(HASH_BITS, _MULTIHASH_TABLES, _MULTIHASH_BITS)
        index.nflip = nflip
    else:
        index = faiss.IndexBinaryFlat(HASH_BITS)
    if len(codes):
        index.add(codes)
    return index


def hamming_pairs(codes: np.ndarray, radius: int, *, batch: int = 8192) -> np.ndarray:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``radius``."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    index = binary_index(codes, radius)
    out = []
    for start in range(0, len(codes), batch):
        lims, dist, found = index.range_search(codes[start:start + batch], radius + 1)  # "<"
        lims = lims.astype(np.int64)
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims))
        found = found.astype(np.int64)
        keep = found > rows
        out.append(np.stack([rows[keep], found[keep], dist[keep].astype(np.int64)], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)


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


# ---- the catalogue's fingerprints ----------------------------------------------------------
@dataclass
class Fingerprints:
    """Per catalogue item: the 64-bit phash (``codes``, packed) and the colour grid."""

    ids: list[str]
    codes: np.ndarray
    colours: np.ndarray

    def take(self, rows: Sequence[int]) -> "Fingerprints":
        rows = list(rows)
        return Fingerprints([self.ids[r] for r in rows], self.codes[rows], self.colours[rows])


def fingerprint(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(phash code, colour grid)`` of one image."""
    return phash_code(image), colour_grid(image)


def _decode_path(path: str) -> Image.Image:
    from lookalike.catalogue.images import decode_image

    return decode_image(Path(path), source=path)


def catalogue_fingerprints(project, *, save: bool = True, workers: int = 2) -> Fingerprints:
    """Fingerprints of every catalogue item, computing only those of images not seen before.

    Items whose image cannot be decoded are left out. New fingerprints are saved when the
    project is writable and ``save`` is true.
    """
    hashes = project.store.content_hashes()
    known = _load_fingerprints(project.path)
    missing = sorted(set(hashes.values()) - set(known))
    if missing:
        wanted = set(missing)
        paths = {item.content_hash: str(item.image_path) for item in project.store.items()
                 if item.content_hash in wanted}

        def one(key: str) -> tuple[str, tuple[np.ndarray, np.ndarray] | None]:
            try:
                return key, fingerprint(_decode_path(paths[key]))
            except LookalikeError:
                return key, None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for key, value in pool.map(one, missing):
                if value is not None:
                    known[key] = value
        if save and not project.read_only:
            keys = sorted(known)
            with versioned_folder(project.path / PHASH_DIR) as staging:
                _save_fingerprints(staging, keys, known)
    ids = [i for i, h in hashes.items() if h in known]
    codes = np.zeros((len(ids), HASH_BITS // 8), dtype=np.uint8)
    colours = np.zeros((len(ids), COLOUR_GRID * COLOUR_GRID, 3), dtype=np.float16)
    for n, item_id in enumerate(ids):
        codes[n], colours[n] = known[hashes[item_id]]
    return Fingerprints(ids, codes, colours)


def catalogue_phashes(project, *, save: bool = True) -> tuple[list[str], np.ndarray]:
    """``(ids, codes)``: the perceptual hashes of :func:`catalogue_fingerprints`."""
    prints = catalogue_fingerprints(project, save=save)
    return prints.ids, prints.codes


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _save_fingerprints(folder: Path, keys: list[str],
                       known: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    atomic_write_bytes(folder / "codes.npy", _npy(np.stack([known[k][0] for k in keys])))
    atomic_write_bytes(folder / "colours.npy", _npy(np.stack([known[k][1] for k in keys])))
    atomic_write_text(folder / "keys.json", json.dumps(
        {"bits": HASH_BITS, "colour_grid": COLOUR_GRID, "keys": keys}))


def _load_fingerprints(project_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = current_version(project_path / PHASH_DIR)
    if folder is None:
        return {}
    try:
        meta = json.loads((folder / "keys.json").read_text())
        codes = np.load(folder / "codes.npy", allow_pickle=False)
        colours = np.load(folder / "colours.npy", allow_pickle=False)
    except (OSError, ValueError):
        return {}  # damaged: compute again
    keys = meta.get("keys", [])
    if (meta.get("colour_grid") != COLOUR_GRID or codes.shape != (len(keys), HASH_BITS // 8)
            or colours.shape != (len(keys), COLOUR_GRID * COLOUR_GRID, 3)):
        return {}
    return {key: (codes[n], colours[n]) for n, key in enumerate(keys)}


# ---- the verbs ------------------------------------------------------------------------------
def duplicates(project, method: str = DEFAULT_METHOD, threshold: float | None = None, *,
               max_colour_difference: float = MAX_COLOUR_DIFFERENCE, index: str | None = None,
               neighbours: int = 10, save: bool = True, grid_groups: int = 40) -> DuplicateReport:
    """Groups of near-duplicate catalogue items (see the module docstring for the methods).

    ``threshold``: the largest Hamming distance in bits for ``phash`` and ``phash+colour``
    (default 8 of 64), the smallest cosine for ``embedding`` (default 0.97). With ``save`` (and a
    writable project) writes ``groups.json`` and ``groups.html`` (a picture grid of the largest
    groups) into ``<project>/reports/duplicates-<method>/``.
    """
    method = _check_method(method)
    threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    started = time.perf_counter()
    if method.startswith("phash"):
        radius = _radius(threshold)
        prints = catalogue_fingerprints(project, save=save)
        ids = prints.ids
        pairs = hamming_pairs(prints.codes, radius)
        if method == "phash+colour":
            pairs = pairs[pair_colour_differences(prints.colours, pairs) <= max_colour_difference]
    else:
        if not 0.0 < float(threshold) <= 1.0:
            raise LookalikeError(f"embedding threshold is a cosine in (0, 1], not {threshold}")
        ids, pairs = embedding_pairs(project, float(threshold), index=index,
                                     neighbours=neighbours)
    report = DuplicateReport(method=method, threshold=float(threshold), n_items=len(ids),
                             n_pairs=len(pairs), groups=_groups(ids, pairs))
    report.seconds = time.perf_counter() - started
    if save and not project.read_only:
        out = project.path / "reports" / f"duplicates-{method.replace('+', '-')}"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "groups.json", json.dumps(report.to_json(), indent=2))
        write_duplicate_grid(out / "groups.html", project, report, grid_groups)
        report.folder = out
    return report


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise UnknownNameError(f"unknown duplicate method {method!r}; use one of "
                               f"{', '.join(METHODS)}")
    return method


def _radius(threshold: float) -> int:
    radius = int(threshold)
    if radius < 0 or radius > HASH_BITS or radius != threshold:
        raise LookalikeError(f"phash threshold must be a whole number of bits in 0..64, "
                             f"not {threshold}")
    return radius


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
    loaded = project._index(index)
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
    unit = "1 - cosine" if report.method == "embedding" else "bits"
    return write_result_grid_html(
        path, rows, title=f"near-duplicate groups ({report.method}, threshold {report.threshold:g})",
        note=f"{len(report.groups)} groups, {report.n_duplicate_items} items; largest pair "
             f"distance per group in {unit}.",
        summary={"groups": len(report.groups), "items in groups": report.n_duplicate_items,
                 "pairs": report.n_pairs})


class PHashMatcher:
    """The catalogue's fingerprints, ready to check incoming images one at a time.

    ``find(image)`` lists ``(id, bits)`` of catalogue items within ``threshold`` bits (and, with
    ``max_colour_difference``, whose colour grids agree), closest first; ``add(id, image)`` makes
    a newly accepted item findable, so duplicates inside one ingest are caught too. Thread-safe.
    """

    def __init__(self, prints: Fingerprints, threshold: int = DEFAULT_THRESHOLDS["phash"],
                 max_colour_difference: float | None = MAX_COLOUR_DIFFERENCE) -> None:
        self.threshold = _radius(threshold)
        self.max_colour_difference = max_colour_difference
        self._ids = list(prints.ids)
        self._colours = list(prints.colours)
        self._index = binary_index(prints.codes, self.threshold)
        self._lock = threading.Lock()

    @classmethod
    def for_project(cls, project, threshold: int = DEFAULT_THRESHOLDS["phash"],
                    max_colour_difference: float | None = MAX_COLOUR_DIFFERENCE
                    ) -> "PHashMatcher":
        return cls(catalogue_fingerprints(project), threshold, max_colour_difference)

    @classmethod
    def for_store(cls, store, threshold: int = DEFAULT_THRESHOLDS["phash"],
                  max_colour_difference: float | None = MAX_COLOUR_DIFFERENCE
                  ) -> "PHashMatcher":
        """The matcher of a catalogue store's items (what ingest checks incoming images with);
        fingerprints are cached in the store's project directory like :func:`duplicates`."""
        view = _StoreProject(store=store, path=Path(store.project_dir), read_only=False)
        return cls(catalogue_fingerprints(view), threshold, max_colour_difference)

    def __len__(self) -> int:
        return len(self._ids)

    def find(self, image: Image.Image) -> list[tuple[str, float]]:
        return self.find_fingerprint(*fingerprint(image))

    def find_fingerprint(self, code: np.ndarray, colours: np.ndarray) -> list[tuple[str, float]]:
        """:meth:`find` for a precomputed :func:`fingerprint`."""
        with self._lock:
            if not self._ids:
                return []
            _, dist, found = self._index.range_search(
                np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8), self.threshold + 1)
            order = np.lexsort((found, dist))
            matches = [(int(found[n]), float(dist[n])) for n in order]
            if self.max_colour_difference is not None and matches:
                grids = np.stack([self._colours[row] for row, _ in matches])
                keep = colour_difference(grids, colours[None]) <= self.max_colour_difference
                matches = [m for m, ok in zip(matches, keep) if ok]
            return [(self._ids[row], bits) for row, bits in matches]

    def add(self, item_id: str, image: Image.Image) -> None:
        self.add_fingerprint(item_id, *fingerprint(image))

    def add_fingerprint(self, item_id: str, code: np.ndarray, colours: np.ndarray) -> None:
        """:meth:`add` for a precomputed :func:`fingerprint`."""
        with self._lock:
            self._index.add(np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8))
            self._ids.append(str(item_id))
            self._colours.append(colours)


@dataclass
class _StoreProject:
    """The three things :func:`catalogue_fingerprints` needs from a project, for a bare store."""

    store: Any
    path: Path
    read_only: bool = False


_MATCHERS: dict[tuple[str, str, int, float | None], PHashMatcher] = {}
_MATCHERS_LOCK = threading.Lock()


def find_duplicate_of(project, image: Any, method: str = DEFAULT_METHOD,
                      threshold: float | None = None, *,
                      max_colour_difference: float = MAX_COLOUR_DIFFERENCE,
                      index: str | None = None) -> list[tuple[str, float]]:
    """Catalogue items that are near-duplicates of ``image`` (path, bytes or PIL image), as
    ``(id, distance)`` closest first: Hamming bits for ``phash`` / ``phash+colour``,
    ``1 - cosine`` for ``embedding``. An empty list means no duplicate. This is the check an
    ingest runs on each incoming image (see :func:`duplicates` for the methods)."""
    from lookalike.catalogue.images import as_image as _as_image

    method = _check_method(method)
    picture = _as_image(image)
    threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    if method == "embedding":
        loaded = project._index(index)
        vector = loaded.embedder.embed_one(picture)
        hits = loaded.index.search(vector[None, :], k=10)[0]
        return [(i, 1.0 - s) for i, s in zip(hits.ids, hits.scores) if s >= float(threshold)]
    colour = max_colour_difference if method == "phash+colour" else None
    return _matcher(project, _radius(threshold), colour).find(picture)


def _matcher(project, threshold: int, max_colour_difference: float | None) -> PHashMatcher:
    """One matcher per project state: a new ingest (more items) or a new fingerprint folder
    version gives a fresh one; only the latest is kept."""
    def key() -> tuple[str, str, int, float | None]:
        folder = current_version(project.path / PHASH_DIR)
        return (str(project.path), f"{folder}:{len(project.store)}", threshold,
                max_colour_difference)

    with _MATCHERS_LOCK:
        matcher = _MATCHERS.get(key())
        if matcher is None:
            matcher = PHashMatcher.for_project(project, threshold, max_colour_difference)
            _MATCHERS.clear()
            _MATCHERS[key()] = matcher
        return matcher


__all__ = ["phash_code", "phash_codes", "colour_grid", "colour_difference", "fingerprint",
           "Fingerprints", "hamming", "hamming_pairs", "binary_index", "group_pairs",
           "DuplicateGroup", "DuplicateReport", "catalogue_fingerprints", "catalogue_phashes",
           "duplicates", "embedding_pairs", "vector_pairs", "pair_cosines",
           "pair_colour_differences", "find_duplicate_of", "PHashMatcher", "write_duplicate_grid",
           "METHODS", "DEFAULT_METHOD", "DEFAULT_THRESHOLDS", "MAX_COLOUR_DIFFERENCE"]
