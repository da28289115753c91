"""Per-image fingerprints of a catalogue, cached by content hash: what near-duplicate checks use.

* the 64-bit DCT perceptual hash (the ImageHash package), searched with FAISS binary indexes;
* an 8 x 8 CIELAB colour grid (the ``phash+colour`` check);
* a 30 x 40 CIELAB thumbnail (the ``copies`` verification of :mod:`.copy_verify`).

They are kept under ``<project>/duplicates/phash/`` (a versioned folder: ``codes.npy``,
``colours.npy``, ``thumbs.npy``, ``keys.json``) so later runs only look at new images.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.layout import PHASH_DIR
from lookalike.catalogue.copy_verify import THUMB_SIZE, thumbnail
from lookalike.storage import atomic_write_bytes, atomic_write_text, current_version, versioned_folder

HASH_BITS = 64
COLOUR_GRID = 8
#: The default Hamming radius of a phash near-duplicate, and the largest colour-grid difference
#: (CIELAB Delta-E of the worst cell) of a ``phash+colour`` pair.
PHASH_THRESHOLD = 8
MAX_COLOUR_DIFFERENCE = 12.0
_THUMB_SHAPE = (3, THUMB_SIZE[1], THUMB_SIZE[0])
_MULTIHASH_TABLES, _MULTIHASH_BITS = 4, 16


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


@dataclass
class Fingerprints:
    """Per catalogue item: the 64-bit phash (``codes``, packed), the colour grid and the
    thumbnail (``thumbs``, ``[n, 3, 40, 30]`` uint8)."""

    ids: list[str]
    codes: np.ndarray
    colours: np.ndarray
    thumbs: np.ndarray

    def take(self, rows: Sequence[int]) -> "Fingerprints":
        rows = list(rows)
        return Fingerprints([self.ids[r] for r in rows], self.codes[rows], self.colours[rows],
                            self.thumbs[rows])


Fingerprint = tuple[np.ndarray, np.ndarray, np.ndarray]


def fingerprint(image: Image.Image) -> Fingerprint:
    """``(phash code, colour grid, thumbnail)`` of one image."""
    return phash_code(image), colour_grid(image), thumbnail(image)


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

        def one(key: str) -> tuple[str, Fingerprint | None]:
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
    thumbs = np.zeros((len(ids), *_THUMB_SHAPE), dtype=np.uint8)
    for n, item_id in enumerate(ids):
        codes[n], colours[n], thumbs[n] = known[hashes[item_id]]
    return Fingerprints(ids, codes, colours, thumbs)


def catalogue_phashes(project, *, save: bool = True) -> tuple[list[str], np.ndarray]:
    """``(ids, codes)``: the perceptual hashes of :func:`catalogue_fingerprints`."""
    prints = catalogue_fingerprints(project, save=save)
    return prints.ids, prints.codes


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _save_fingerprints(folder: Path, keys: list[str], known: dict[str, Fingerprint]) -> None:
    for n, name in enumerate(("codes.npy", "colours.npy", "thumbs.npy")):
        atomic_write_bytes(folder / name, _npy(np.stack([known[k][n] for k in keys])))
    atomic_write_text(folder / "keys.json", json.dumps(
        {"bits": HASH_BITS, "colour_grid": COLOUR_GRID, "thumb": list(_THUMB_SHAPE),
         "keys": keys}))


def _load_fingerprints(project_path: Path) -> dict[str, Fingerprint]:
    folder = current_version(project_path / PHASH_DIR)
    if folder is None:
        return {}
    try:
        meta = json.loads((folder / "keys.json").read_text())
        codes = np.load(folder / "codes.npy", allow_pickle=False)
        colours = np.load(folder / "colours.npy", allow_pickle=False)
        thumbs = np.load(folder / "thumbs.npy", allow_pickle=False)
    except (OSError, ValueError):
        return {}  # damaged or from before thumbnails: compute again
    keys = meta.get("keys", [])
    if (meta.get("colour_grid") != COLOUR_GRID or codes.shape != (len(keys), HASH_BITS // 8)
            or colours.shape != (len(keys), COLOUR_GRID * COLOUR_GRID, 3)
            or thumbs.shape != (len(keys), *_THUMB_SHAPE)):
        return {}
    return {key: (codes[n], colours[n], thumbs[n]) for n, key in enumerate(keys)}


@dataclass
class StoreView:
    """The three things :func:`catalogue_fingerprints` needs from a project, for a bare store."""

    store: Any
    path: Path
    read_only: bool = False


def phash_neighbours(codes: np.ndarray, queries: np.ndarray, k: int, radius: int,
                     skip_self: bool = True) -> np.ndarray:
    """Pairs ``(query row, catalogue row, bits)``: each query's ``k`` nearest catalogue codes
    within ``radius`` bits (brute force, FAISS ``IndexBinaryFlat``); with ``skip_self`` query
    ``n`` is catalogue row ``n`` and is left out."""
    import faiss

    if not len(codes) or not len(queries):
        return np.zeros((0, 3), dtype=np.int64)
    index = faiss.IndexBinaryFlat(HASH_BITS)
    index.add(np.ascontiguousarray(codes, dtype=np.uint8))
    dist, found = index.search(np.ascontiguousarray(queries, dtype=np.uint8),
                               min(len(codes), k + int(skip_self)))
    rows = np.repeat(np.arange(len(queries)), dist.shape[1])
    dist, found = dist.reshape(-1).astype(np.int64), found.reshape(-1).astype(np.int64)
    keep = (found >= 0) & (dist <= radius)
    if skip_self:
        keep &= found != rows
    return np.stack([rows[keep], found[keep], dist[keep]], axis=1)


def check_radius(threshold: float) -> int:
    """A phash threshold as whole bits, or a clear error."""
    radius = int(threshold)
    if radius < 0 or radius > HASH_BITS or radius != threshold:
        raise LookalikeError(f"phash threshold must be a whole number of bits in 0..64, "
                             f"not {threshold}")
    return radius


class PHashMatcher:
    """The catalogue's fingerprints, ready to check incoming images one at a time.

    ``find(image)`` lists ``(id, bits)`` of catalogue items within ``threshold`` bits (and, with
    ``max_colour_difference``, whose colour grids agree), closest first; ``add(id, image)`` makes
    a newly accepted item findable, so duplicates inside one ingest are caught too. Thread-safe.
    """

    def __init__(self, prints: Fingerprints, threshold: int = PHASH_THRESHOLD,
                 max_colour_difference: float | None = MAX_COLOUR_DIFFERENCE) -> None:
        self.threshold = check_radius(threshold)
        self.max_colour_difference = max_colour_difference
        self._ids = list(prints.ids)
        self._colours = list(prints.colours)
        self._index = binary_index(prints.codes, self.threshold)
        self._lock = threading.Lock()

    @classmethod
    def for_project(cls, project, threshold: int = PHASH_THRESHOLD,
                    max_colour_difference: float | None = MAX_COLOUR_DIFFERENCE
                    ) -> "PHashMatcher":
        return cls(catalogue_fingerprints(project), threshold, max_colour_difference)

    @classmethod
    def for_store(cls, store, threshold: int = PHASH_THRESHOLD,
                  max_colour_difference: float | None = MAX_COLOUR_DIFFERENCE
                  ) -> "PHashMatcher":
        """The matcher of a catalogue store's items (what ingest checks incoming images with);
        fingerprints are cached in the store's project directory like :func:`duplicates`."""
        view = StoreView(store=store, path=Path(store.project_dir), read_only=False)
        return cls(catalogue_fingerprints(view), threshold, max_colour_difference)

    def __len__(self) -> int:
        return len(self._ids)

    def find(self, image: Image.Image) -> list[tuple[str, float]]:
        return self.find_fingerprint(fingerprint(image))

    def descriptor_of(self, image: Image.Image) -> None:
        """No copy descriptors here (the same interface as ``CopyMatcher``)."""
        return None

    def find_fingerprint(self, print_: Fingerprint, neighbour_ids: Sequence[str] = (),
                         descriptor: Any = None) -> list[tuple[str, float]]:
        """:meth:`find` for a precomputed :func:`fingerprint` (``neighbour_ids`` and
        ``descriptor`` are ignored: the hash alone decides)."""
        code, colours, _ = print_
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
        self.add_fingerprint(item_id, fingerprint(image))

    def add_fingerprint(self, item_id: str, print_: Fingerprint, descriptor: Any = None) -> None:
        """:meth:`add` for a precomputed :func:`fingerprint` (``descriptor`` is ignored)."""
        code, colours, _ = print_
        with self._lock:
            self._index.add(np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8))
            self._ids.append(str(item_id))
            self._colours.append(colours)


__all__ = ["phash_code", "phash_codes", "colour_grid", "colour_difference", "hamming",
           "binary_index", "hamming_pairs", "Fingerprints", "Fingerprint", "fingerprint",
           "catalogue_fingerprints", "catalogue_phashes", "StoreView", "phash_neighbours",
           "check_radius", "PHashMatcher", "PHASH_THRESHOLD", "MAX_COLOUR_DIFFERENCE", "PHASH_DIR", "HASH_BITS", "COLOUR_GRID"]
