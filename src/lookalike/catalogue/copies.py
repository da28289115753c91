"""The ``copies`` near-duplicate detector: candidates from hashes and embeddings, then a check
that the two photos are the same photo, not two similar products.

Re-uploads are usually cropped a few pixels, resized, brightened and re-saved at low JPEG quality
all at once; no single fingerprint survives that and still tells a copy from a look-alike. So:

1. *Candidates* (cheap, recall first): each item's ``phash_neighbours`` nearest perceptual hashes
   within ``phash_radius`` bits (FAISS binary brute force), together with its ``neighbours``
   nearest *copy descriptors* (``lookalike.models.copy_descriptor``: unit rows trained so that a
   heavily edited copy lies nearer its original than any look-alike; FAISS exact inner product)
   with a cosine of at least ``min_descriptor``. Without descriptors, the project's image-index
   neighbours with a cosine of at least ``min_cosine`` stand in (``embedding_pairs`` /
   ``neighbours_of``). Hashes catch re-encodes; descriptors catch crops, resizes and their
   combinations.
2. *Verification* (:mod:`.copy_verify`): the pair's thumbnails are aligned (scale, shift, gain)
   and kept when the band-passed texture agrees (``min_texture``), the colour does too
   (``max_colour``) and -- with descriptors -- their cosine is at least ``min_descriptor``; a
   pair whose descriptor cosine reaches ``accept_descriptor`` is a copy whatever its
   thumbnails say (a strong crop defeats the alignment, not the descriptor).

:func:`copy_pairs` runs this over a catalogue's :class:`~.fingerprints.Fingerprints`;
:class:`CopyMatcher` checks incoming images one at a time (ingest, ``--photo``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.catalogue.copy_verify import MAX_COLOUR, MIN_TEXTURE, is_copy, score_pairs
from lookalike.catalogue.fingerprints import (HASH_BITS, Fingerprint, Fingerprints, StoreView,
                                              catalogue_fingerprints, fingerprint,
                                              phash_neighbours)

#: Descriptor cosines of the verification: the floor every copy must reach and the level that
#: is a copy on its own (chosen with the thumbnail thresholds on validation copies,
#: benchmarks/dedup_bench.py --combined --full).
MIN_DESCRIPTOR = 0.4
ACCEPT_DESCRIPTOR = 0.8

#: ``neighbours_of(image)``: catalogue ids of the image's nearest embeddings (best first).
NeighboursOf = Callable[[Image.Image], Sequence[str]]


@dataclass(frozen=True)
class CopySettings:
    """How candidates are gathered and verified (defaults chosen on validation copies of train
    products with benchmarks/dedup_bench.py)."""

    min_texture: float = MIN_TEXTURE
    max_colour: float = MAX_COLOUR
    neighbours: int = 5
    min_cosine: float = 0.80
    phash_neighbours: int = 5
    phash_radius: int = 22
    min_descriptor: float = MIN_DESCRIPTOR
    accept_descriptor: float = ACCEPT_DESCRIPTOR

    def check(self) -> "CopySettings":
        if not -1.0 <= self.min_texture <= 1.0:
            raise LookalikeError(f"copies threshold is a texture correlation in [-1, 1], "
                                 f"not {self.min_texture}")
        if self.max_colour < 0 or self.neighbours < 0 or self.phash_neighbours < 0:
            raise LookalikeError("copy settings must not be negative")
        return self


def candidate_pairs(codes: np.ndarray, settings: CopySettings,
                    extra: np.ndarray | None = None) -> np.ndarray:
    """Unique candidate pairs ``[m, 2]`` (``i < j``): phash neighbours of every code plus the
    ``extra`` pairs (descriptor or embedding neighbours)."""
    found = phash_neighbours(codes, codes, settings.phash_neighbours, settings.phash_radius)
    parts = [found[:, :2]]
    if extra is not None and len(extra):
        parts.append(np.asarray(extra)[:, :2].astype(np.int64))
    pairs = np.concatenate(parts).astype(np.int64)
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), dtype=np.int64)


def descriptor_pairs(descriptors: np.ndarray, neighbours: int, min_cosine: float,
                     batch: int = 4096) -> np.ndarray:
    """``[m, 2]`` pairs ``(i, j)``, ``i < j``: each row's ``neighbours`` nearest other rows of
    ``descriptors`` (unit rows, exact inner product) with a cosine of at least ``min_cosine``."""
    import faiss

    vectors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if len(vectors) < 2 or neighbours < 1:
        return np.zeros((0, 2), dtype=np.int64)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    k = min(len(vectors), neighbours + 1)
    out = []
    for start in range(0, len(vectors), batch):
        scores, found = index.search(vectors[start:start + batch], k)
        rows = np.repeat(np.arange(start, start + len(found)), k)
        keep = (scores.reshape(-1) >= min_cosine) & (found.reshape(-1) >= 0) \
            & (found.reshape(-1) != rows)
        out.append(np.stack([rows[keep], found.reshape(-1)[keep]], axis=1))
    pairs = np.sort(np.concatenate(out).astype(np.int64), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), dtype=np.int64)


def pair_descriptor_cosines(descriptors: np.ndarray | None, pairs: np.ndarray) -> np.ndarray:
    """Descriptor cosine of each pair (NaN for all without descriptors)."""
    if descriptors is None:
        return np.full(len(pairs), np.nan, dtype=np.float32)
    a = descriptors[pairs[:, 0].astype(np.int64)]
    b = descriptors[pairs[:, 1].astype(np.int64)]
    return np.einsum("ij,ij->i", a, b).astype(np.float32)


def keep_copies(scores, cosines: np.ndarray, settings: CopySettings) -> np.ndarray:
    """Boolean per pair: a copy by the thumbnails (and descriptors, where known)."""
    known = ~np.isnan(cosines)
    safe = np.where(known, cosines, 0.0)
    by_thumbs = is_copy(scores, settings.min_texture, settings.max_colour) \
        & (~known | (safe >= settings.min_descriptor))
    return by_thumbs | (known & (safe >= settings.accept_descriptor))


def verify_pairs(thumbs: np.ndarray, pairs: np.ndarray, settings: CopySettings,
                 progress: Callable[[int], None] | None = None,
                 batch: int = 2048, descriptors: np.ndarray | None = None) -> np.ndarray:
    """The candidate ``pairs`` that are copies, as ``(i, j, 1 - texture)``."""
    kept = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        scores = score_pairs(thumbs[chunk[:, 0]], thumbs[chunk[:, 1]])
        ok = keep_copies(scores, pair_descriptor_cosines(descriptors, chunk), settings)
        kept.append(np.column_stack([chunk[ok], 1.0 - scores.texture[ok]]))
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(kept) if kept else np.zeros((0, 3))


def copy_pairs(prints: Fingerprints, settings: CopySettings = CopySettings(),
               embedding_pairs: np.ndarray | None = None,
               progress: Callable[[int], None] | None = None,
               descriptors: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``(pairs, candidates)``: the verified copy pairs ``(i, j, 1 - texture)`` among the
    catalogue's rows and how many candidate pairs were checked. ``descriptors`` (unit rows
    aligned with ``prints``) give the descriptor candidates and checks; ``embedding_pairs``
    are extra candidates (e.g. image-index neighbours) for catalogues without them."""
    settings.check()
    extra = [] if embedding_pairs is None else [np.asarray(embedding_pairs)[:, :2]]
    if descriptors is not None:
        extra.append(descriptor_pairs(descriptors, settings.neighbours, settings.min_descriptor))
    joined = np.concatenate(extra).astype(np.int64) if extra else None
    candidates = candidate_pairs(prints.codes, settings, joined)
    return (verify_pairs(prints.thumbs, candidates, settings, progress, descriptors=descriptors),
            len(candidates))


#: ``describe(image)``: the image's copy descriptor (a unit row).
Describe = Callable[[Image.Image], np.ndarray]


class CopyMatcher:
    """A catalogue's fingerprints (and copy descriptors), ready to check incoming images one at
    a time.

    ``find(image)`` lists ``(id, 1 - texture)`` of the catalogue items ``image`` is a copy of,
    closest first; ``add(id, image)`` makes a newly accepted item findable, so copies inside one
    ingest are caught too. With ``descriptors`` (unit rows aligned with ``prints``) and
    ``describe``, the image's nearest descriptors join the phash candidates and the descriptor
    checks apply; else ``neighbours_of`` (optional) adds image-index neighbours. Thread-safe.
    """

    def __init__(self, prints: Fingerprints, settings: CopySettings = CopySettings(),
                 neighbours_of: NeighboursOf | None = None,
                 descriptors: np.ndarray | None = None, describe: Describe | None = None) -> None:
        import faiss

        self.settings = settings.check()
        self.neighbours_of = neighbours_of
        self._ids = list(prints.ids)
        self._rows = {item_id: n for n, item_id in enumerate(self._ids)}
        self._thumbs = list(prints.thumbs)
        self._index = faiss.IndexBinaryFlat(HASH_BITS)
        if len(prints.codes):
            self._index.add(np.ascontiguousarray(prints.codes, dtype=np.uint8))
        self._describe = describe if descriptors is not None else None
        self._vectors = None
        if self._describe is not None:
            if len(descriptors) != len(self._ids):
                raise LookalikeError(f"{len(descriptors)} copy descriptors for "
                                     f"{len(self._ids)} fingerprints")
            self._vectors = faiss.IndexFlatIP(int(np.shape(descriptors)[1]))
            if len(descriptors):
                self._vectors.add(np.ascontiguousarray(descriptors, dtype=np.float32))
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, store, settings: CopySettings = CopySettings(),
                  neighbours_of: NeighboursOf | None = None) -> "CopyMatcher":
        """The matcher of a catalogue store's items (what ingest checks incoming images with);
        fingerprints are cached in the store's project directory."""
        view = StoreView(store=store, path=Path(store.project_dir), read_only=False)
        return cls(catalogue_fingerprints(view), settings, neighbours_of)

    def __len__(self) -> int:
        return len(self._ids)

    def descriptor_of(self, image: Image.Image) -> np.ndarray | None:
        """The image's copy descriptor, or None when this matcher checks none."""
        return self._describe(image) if self._describe is not None else None

    def find(self, image: Image.Image) -> list[tuple[str, float]]:
        descriptor = self.descriptor_of(image)
        if descriptor is not None:
            return self.find_fingerprint(fingerprint(image), descriptor=descriptor)
        return self.find_fingerprint(fingerprint(image), self._neighbours(image))

    def _neighbours(self, image: Image.Image) -> Sequence[str]:
        return self.neighbours_of(image) if self.neighbours_of is not None else ()

    def find_fingerprint(self, print_: Fingerprint, neighbour_ids: Sequence[str] = (),
                         descriptor: np.ndarray | None = None) -> list[tuple[str, float]]:
        """:meth:`find` for a precomputed :func:`~.fingerprints.fingerprint` (and the image's
        embedding neighbours or copy descriptor, when known)."""
        code, _, thumb = print_
        with self._lock:
            if not self._ids:
                return []
            rows = self._hash_rows(code) | {self._rows[i] for i in neighbour_ids
                                            if i in self._rows}
            cosines = {}
            if descriptor is not None and self._vectors is not None:
                cosines = self._descriptor_cosines(descriptor, rows)
                rows |= set(cosines)
            rows_list = sorted(rows)
            if not rows_list:
                return []
            others = np.stack([self._thumbs[r] for r in rows_list])
        scores = score_pairs(np.repeat(thumb[None], len(rows_list), axis=0), others)
        ok = keep_copies(scores, np.asarray([cosines.get(r, np.nan) for r in rows_list],
                                            dtype=np.float32), self.settings)
        matches = [(self._ids[r], float(1.0 - t))
                   for r, t, keep in zip(rows_list, scores.texture, ok) if keep]
        return sorted(matches, key=lambda m: (m[1], m[0]))

    def _hash_rows(self, code: np.ndarray) -> set[int]:
        k = min(len(self._ids), self.settings.phash_neighbours)
        dist, found = self._index.search(
            np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8), k)
        return {int(r) for r, d in zip(found[0], dist[0])
                if r >= 0 and d <= self.settings.phash_radius}

    def _descriptor_cosines(self, descriptor: np.ndarray, rows: set[int]) -> dict[int, float]:
        """Cosines of the nearest descriptors (at least ``min_cosine``) and of ``rows``."""
        query = np.ascontiguousarray(np.reshape(descriptor, (1, -1)), dtype=np.float32)
        k = min(self._vectors.ntotal, self.settings.neighbours)
        scores, found = self._vectors.search(query, k) if k else (np.zeros((1, 0)),) * 2
        out = {int(r): float(c) for r, c in zip(found[0], scores[0])
               if r >= 0 and c >= self.settings.min_descriptor}
        for row in rows - set(out):
            out[row] = float(self._vectors.reconstruct(int(row)) @ query[0])
        return out

    def add(self, item_id: str, image: Image.Image) -> None:
        self.add_fingerprint(item_id, fingerprint(image), self.descriptor_of(image))

    def add_fingerprint(self, item_id: str, print_: Fingerprint,
                        descriptor: np.ndarray | None = None) -> None:
        """:meth:`add` for a precomputed fingerprint (and copy descriptor)."""
        code, _, thumb = print_
        with self._lock:
            if self._vectors is not None:
                if descriptor is None:
                    raise LookalikeError("this matcher checks copy descriptors: add() needs one")
                self._vectors.add(np.ascontiguousarray(np.reshape(descriptor, (1, -1)),
                                                       dtype=np.float32))
            self._index.add(np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8))
            self._rows[str(item_id)] = len(self._ids)
            self._ids.append(str(item_id))
            self._thumbs.append(thumb)


__all__ = ["CopySettings", "CopyMatcher", "NeighboursOf", "Describe", "candidate_pairs",
           "descriptor_pairs", "pair_descriptor_cosines", "keep_copies", "verify_pairs",
           "copy_pairs"]
