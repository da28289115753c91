"""The ``copies`` near-duplicate detector: candidates from hashes and embeddings, then a check
that the two photos are the same photo, not two similar products.

Re-uploads are usually cropped a few pixels, resized, brightened and re-saved at low JPEG quality
all at once; no single fingerprint survives that and still tells a copy from a look-alike. So:

1. *Candidates* (cheap, recall first): each item's ``phash_neighbours`` nearest perceptual hashes
   within ``phash_radius`` bits (FAISS binary brute force), together with -- when the project
   has an image index -- its ``neighbours`` nearest embeddings with a cosine of at least
   ``min_cosine``. Hashes catch re-encodes of photos the embedder moves; embeddings catch crops
   the hash does not survive.
2. *Verification* (:mod:`.copy_verify`): the pair's thumbnails are aligned (scale, shift, gain)
   and kept when the band-passed texture agrees (``min_texture``) and the colour does too
   (``max_colour``).

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
    ``extra`` pairs (e.g. embedding neighbours)."""
    found = phash_neighbours(codes, codes, settings.phash_neighbours, settings.phash_radius)
    parts = [found[:, :2]]
    if extra is not None and len(extra):
        parts.append(np.asarray(extra)[:, :2].astype(np.int64))
    pairs = np.concatenate(parts).astype(np.int64)
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), dtype=np.int64)


def verify_pairs(thumbs: np.ndarray, pairs: np.ndarray, settings: CopySettings,
                 progress: Callable[[int], None] | None = None,
                 batch: int = 2048) -> np.ndarray:
    """The candidate ``pairs`` that are copies, as ``(i, j, 1 - texture)``."""
    kept = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        scores = score_pairs(thumbs[chunk[:, 0]], thumbs[chunk[:, 1]])
        ok = is_copy(scores, settings.min_texture, settings.max_colour)
        kept.append(np.column_stack([chunk[ok], 1.0 - scores.texture[ok]]))
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(kept) if kept else np.zeros((0, 3))


def copy_pairs(prints: Fingerprints, settings: CopySettings = CopySettings(),
               embedding_pairs: np.ndarray | None = None,
               progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """``(pairs, candidates)``: the verified copy pairs ``(i, j, 1 - texture)`` among the
    catalogue's rows and how many candidate pairs were checked."""
    settings.check()
    candidates = candidate_pairs(prints.codes, settings, embedding_pairs)
    return verify_pairs(prints.thumbs, candidates, settings, progress), len(candidates)


class CopyMatcher:
    """A catalogue's fingerprints, ready to check incoming images one at a time.

    ``find(image)`` lists ``(id, 1 - texture)`` of the catalogue items ``image`` is a copy of,
    closest first; ``add(id, image)`` makes a newly accepted item findable, so copies inside one
    ingest are caught too. ``neighbours_of`` (optional) adds embedding neighbours to the phash
    candidates. Thread-safe.
    """

    def __init__(self, prints: Fingerprints, settings: CopySettings = CopySettings(),
                 neighbours_of: NeighboursOf | None = None) -> None:
        import faiss

        self.settings = settings.check()
        self.neighbours_of = neighbours_of
        self._ids = list(prints.ids)
        self._rows = {item_id: n for n, item_id in enumerate(self._ids)}
        self._thumbs = list(prints.thumbs)
        self._index = faiss.IndexBinaryFlat(HASH_BITS)
        if len(prints.codes):
            self._index.add(np.ascontiguousarray(prints.codes, dtype=np.uint8))
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

    def find(self, image: Image.Image) -> list[tuple[str, float]]:
        return self.find_fingerprint(fingerprint(image), self._neighbours(image))

    def _neighbours(self, image: Image.Image) -> Sequence[str]:
        return self.neighbours_of(image) if self.neighbours_of is not None else ()

    def find_fingerprint(self, print_: Fingerprint,
                         neighbour_ids: Sequence[str] = ()) -> list[tuple[str, float]]:
        """:meth:`find` for a precomputed :func:`~.fingerprints.fingerprint` (and the image's
        embedding neighbours, when known)."""
        code, _, thumb = print_
        with self._lock:
            if not self._ids:
                return []
            k = min(len(self._ids), self.settings.phash_neighbours)
            dist, found = self._index.search(
                np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8), k)
            rows = {int(r) for r, d in zip(found[0], dist[0])
                    if r >= 0 and d <= self.settings.phash_radius}
            rows |= {self._rows[i] for i in neighbour_ids if i in self._rows}
            rows_list = sorted(rows)
            if not rows_list:
                return []
            others = np.stack([self._thumbs[r] for r in rows_list])
        scores = score_pairs(np.repeat(thumb[None], len(rows_list), axis=0), others)
        ok = is_copy(scores, self.settings.min_texture, self.settings.max_colour)
        matches = [(self._ids[r], float(1.0 - t))
                   for r, t, keep in zip(rows_list, scores.texture, ok) if keep]
        return sorted(matches, key=lambda m: (m[1], m[0]))

    def add(self, item_id: str, image: Image.Image) -> None:
        self.add_fingerprint(item_id, fingerprint(image))

    def add_fingerprint(self, item_id: str, print_: Fingerprint) -> None:
        """:meth:`add` for a precomputed fingerprint."""
        code, _, thumb = print_
        with self._lock:
            self._index.add(np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8))
            self._rows[str(item_id)] = len(self._ids)
            self._ids.append(str(item_id))
            self._thumbs.append(thumb)


__all__ = ["CopySettings", "CopyMatcher", "NeighboursOf", "candidate_pairs", "verify_pairs",
           "copy_pairs"]
