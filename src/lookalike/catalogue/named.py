"""The named catalogues: ``demo`` (bundled with the package), ``products`` (the full products
Parquet, found through ``$LOOKALIKE_PRODUCTS_PARQUET`` or a search of ``shared/data/``) and
``fashion-mnist`` (Debian's IDX files).

Part of :mod:`lookalike.catalogue.sources` (which re-exports every name here and opens them by
name with :func:`~lookalike.catalogue.sources.open_named`).
"""

from __future__ import annotations

import gzip
import io
import math
import os
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from lookalike.catalogue.records import CatalogueSource, SourceRecord
from lookalike.errors import CatalogueError

PRODUCTS_ENV = "LOOKALIKE_PRODUCTS_PARQUET"
#: Folders (``os.pathsep``-separated) searched for ``shared/data/<PRODUCTS_FILE>`` instead of the
#: current folder and its parents.
PRODUCTS_SEARCH_ENV = "LOOKALIKE_PRODUCTS_SEARCH"
PRODUCTS_FILE = "fashion-products-small.parquet"
FASHION_MNIST_ENV = "LOOKALIKE_FASHION_MNIST_DIR"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

# ---- the bundled demo and the products catalogue ------------------------------------------
def demo_parquet() -> Path:
    """Path of the bundled demo catalogue (a ~2,000 item slice of the products catalogue)."""
    path = Path(str(resources.files("lookalike") / "data" / "demo.parquet"))
    if not path.is_file():
        raise CatalogueError(f"{path}: the bundled demo catalogue is missing; reinstall lookalike "
                             "or rebuild it with scripts/make_demo_catalogue.py")
    return path


def find_products_parquet(roots: Sequence[str | Path] | None = None) -> Path | None:
    """The products Parquet: ``$LOOKALIKE_PRODUCTS_PARQUET``, else
    ``shared/data/fashion-products-small.parquet`` in one of ``roots``.

    ``roots`` default to ``$LOOKALIKE_PRODUCTS_SEARCH`` (folders separated by ``os.pathsep``)
    when set, else the current folder and every parent of it. Returns None when it is nowhere;
    raises CatalogueError when the variable names a missing file.
    """
    configured = os.environ.get(PRODUCTS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise CatalogueError(f"{PRODUCTS_ENV}={configured}: no such file")
        return path
    for folder in products_search_roots() if roots is None else [Path(r) for r in roots]:
        candidate = folder.expanduser() / "shared" / "data" / PRODUCTS_FILE
        if candidate.is_file():
            return candidate
    return None


def products_search_roots() -> list[Path]:
    """Where :func:`find_products_parquet` looks by default: the folders of
    ``$LOOKALIKE_PRODUCTS_SEARCH``, else the current folder and its parents."""
    configured = os.environ.get(PRODUCTS_SEARCH_ENV)
    if configured is not None:
        return [Path(part) for part in configured.split(os.pathsep) if part]
    here = Path.cwd().resolve()
    return [here, *here.parents]


def require_products_parquet(path: str | Path | None = None) -> Path:
    """``path`` if given (must exist), else :func:`find_products_parquet`, else a clear error."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CatalogueError(f"{path}: no such products Parquet")
        return path
    found = find_products_parquet()
    if found is None:
        raise CatalogueError(
            f"the products catalogue ({PRODUCTS_FILE}) was not found: set {PRODUCTS_ENV} to its "
            f"path, or put it at shared/data/{PRODUCTS_FILE} in this folder or a parent (or in "
            f"a folder listed in {PRODUCTS_SEARCH_ENV}); the bundled 'demo' catalogue is a "
            "2,000 item slice of it")
    return found


def load_products_frame(path: str | Path | None = None, split: str | None = None):  # -> DataFrame
    """The products Parquet as a pandas DataFrame (``id`` as str, all other columns as stored,
    ``image_jpeg`` holding JPEG bytes), optionally only one split."""
    import pandas as pd

    if split not in (None, "train", "test"):
        raise CatalogueError(f"unknown split {split!r}; use train or test")
    source = require_products_parquet(path)
    filters = [("split", "==", split)] if split else None
    frame = pd.read_parquet(source, filters=filters)
    frame["id"] = frame["id"].astype(str)
    return frame.reset_index(drop=True)


# ---- Fashion-MNIST --------------------------------------------------------------------
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_mnist_dir() -> Path:
    """Folder of the Fashion-MNIST IDX files (``$LOOKALIKE_FASHION_MNIST_DIR`` or Debian's)."""
    folder = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    if not all((folder / name).is_file() for pair in _FMNIST_FILES.values() for name in pair):
        raise CatalogueError(
            f"{folder}: Fashion-MNIST not found; install it with "
            f"'apt-get install dataset-fashion-mnist' (or set {FASHION_MNIST_ENV} to a folder "
            "holding the four IDX .gz files)")
    return folder


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [n, 28, 28], labels int64 [n], class_names)`` of one split."""
    if split not in _FMNIST_FILES:
        raise CatalogueError(f"unknown Fashion-MNIST split {split!r}; use train or test")
    folder = fashion_mnist_dir()
    image_file, label_file = _FMNIST_FILES[split]
    images = _read_idx(folder / image_file, expected_magic=2051)
    labels = _read_idx(folder / label_file, expected_magic=2049).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise CatalogueError(f"{folder}: {image_file} and {label_file} do not match")
    return images, labels, list(FASHION_MNIST_CLASSES)


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """An IDX file (big-endian header: magic, then one uint32 per dimension) as uint8."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise CatalogueError(f"{path}: not an IDX file of the expected kind (magic {magic})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):
        raise CatalogueError(f"{path}: truncated IDX file ({body.size} of {math.prod(shape)} "
                             "values)")
    return body.reshape(shape)


class FashionMNISTSource(CatalogueSource):
    """Fashion-MNIST as a catalogue: 28x28 grey PNGs, ids ``fmnist-train-00001``...,
    category = class name, split = train / test, attribute ``label`` = class number."""

    def __init__(self, split: str | None = None) -> None:
        splits = [split] if split else ["train", "test"]
        self._parts = [(name, *load_fashion_mnist(name)[:2]) for name in splits]
        super().__init__("fashion-mnist" + (f":{split}" if split else ""))

    def __len__(self) -> int:
        return sum(len(labels) for _, _, labels in self._parts)

    def __iter__(self) -> Iterator[SourceRecord]:
        from PIL import Image

        for split, images, labels in self._parts:
            for number, (pixels, label) in enumerate(zip(images, labels, strict=True), start=1):
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                item_id = f"fmnist-{split}-{number:05d}"
                yield SourceRecord(
                    id=item_id, image=buffer.getvalue(),
                    category=FASHION_MNIST_CLASSES[int(label)], split=split,
                    attributes={"label": int(label)}, row=f"fashion-mnist {split} #{number}")
