"""What ``lookalike report`` compares: the named catalogues (test queries against the train
gallery) and the embedders (registry names with options, or saved-model folders), with the
checks that say whether an embedder fits a catalogue at all.

Part of :mod:`lookalike.evaluate.comparison` (which re-exports every name here).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.models.base import CONFIG_FILE, WEIGHTS_FILE, Embedder, available, embedder_class
from lookalike.models.text import TEXT_ENCODERS


#: Catalogues :func:`load_catalogue` knows; ``all`` on the command line means the first two.
CATALOGUES = ("products", "fashion-mnist", "demo")
ALL_CATALOGUES = ("products", "fashion-mnist")
#: The fixed embedders every report shows (raw pixels is the baseline and is always included).
DEFAULT_EMBEDDERS = ("pixels", "hsv-histogram", "efficientnet-lite0@224",
                     "efficientnet-lite0@112")
BASELINE = "pixels"
#: Gallery sizes of the precision-against-catalogue-size study (the full split is always added).
DEFAULT_SIZES = (1000, 5000, 10000, 20000)
#: ``--quick``: (queries, gallery) sampled as ``benchmarks/quality.py --quick`` does.
QUICK_SIZES = {"products": (500, 5000), "fashion-mnist": (1000, 10000)}
METRICS = {"ks": (1, 10), "map_at": 100, "ndcg_at": 10}
_EMBED_CHUNK = 1024  # images embedded (and held as PIL images) at a time
_PART_ROWS = 8192  # rows per resumable part file of a split's embeddings


class ReportError(LookalikeError):
    """A comparison cannot be run as asked: unknown embedder, bad sizes, empty catalogue."""


# ---- catalogues ---------------------------------------------------------------------------------
@dataclass
class Side:
    """One side of a protocol: ids, labels and a way to read image ``row`` as RGB PIL."""

    ids: list[str]
    labels: np.ndarray
    read: Callable[[int], Any]

    def __len__(self) -> int:
        return len(self.ids)

    def images(self, rows: Sequence[int] | None = None) -> Iterator[Any]:
        for row in range(len(self.ids)) if rows is None else rows:
            yield self.read(int(row))

    @property
    def sample_key(self) -> str:
        """Hash of the ids in order (the cache key of ``benchmarks/quality.py``)."""
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()[:10]


@dataclass
class Catalogue:
    """A class-match protocol: ``queries`` (test split) searched in ``gallery`` (train split).

    ``channels`` and ``size`` (width, height) are the images' native form, which learned
    embedders must have been trained on to be evaluated here.
    """

    name: str
    class_column: str
    channels: int
    size: tuple[int, int]
    queries: Side
    gallery: Side


def load_catalogue(name: str, quick: bool = False,
                   products_path: str | Path | None = None) -> Catalogue:
    """``products`` (the products Parquet, class ``article_type``), ``fashion-mnist`` (10k test
    vs 60k train, class = label) or ``demo`` (the bundled ~2,000 item slice of products).

    ``quick`` samples products 500 vs 5,000 and Fashion-MNIST 1,000 vs 10,000 (seed 0).
    """
    if name in ("products", "demo"):
        import pandas as pd

        from lookalike.catalogue.sources import demo_parquet, load_products_frame

        frame = (load_products_frame(products_path) if name == "products"
                 else pd.read_parquet(demo_parquet()).assign(id=lambda f: f["id"].astype(str)))
        return Catalogue(name, "article_type", 3, (60, 80),
                         _frame_side(frame, "test", quick, name, 0),
                         _frame_side(frame, "train", quick, name, 1))
    if name == "fashion-mnist":
        return Catalogue(name, "label", 1, (28, 28), _fashion_mnist_side("test", quick, 0),
                         _fashion_mnist_side("train", quick, 1))
    raise UnknownNameError(f"unknown catalogue {name!r}; choose from {', '.join(CATALOGUES)} "
                           "or all")


def _frame_side(frame: Any, split: str, quick: bool, name: str, which: int) -> Side:
    from lookalike.catalogue.images import decode_image

    part = frame[frame["split"] == split]
    if quick and name in QUICK_SIZES:
        part = part.sample(n=min(QUICK_SIZES[name][which], len(part)), random_state=0)
    if part.empty:
        raise ReportError(f"{name}: no {split} items")
    ids = part["id"].astype(str).tolist()
    blobs = part["image_jpeg"].tolist()
    return Side(ids, part["article_type"].astype(str).to_numpy(),
                lambda row: decode_image(blobs[row], source=f"{name} id {ids[row]}"))


def _fashion_mnist_side(split: str, quick: bool, which: int) -> Side:
    from PIL import Image

    from lookalike.catalogue.sources import load_fashion_mnist

    pixels, labels, names = load_fashion_mnist(split)
    rows = np.arange(len(pixels))
    if quick:
        rows = np.sort(np.random.default_rng(0).choice(len(pixels), QUICK_SIZES["fashion-mnist"][
            which], replace=False))
    # grey -> RGB, the form every embedder takes (learned 1-channel models convert back)
    return Side([f"{split}-{r}" for r in rows], np.asarray(names, dtype=object)[labels[rows]],
                lambda row: Image.fromarray(pixels[rows[row]]).convert("RGB"))


# ---- embedders ----------------------------------------------------------------------------------
@dataclass
class Entry:
    """An embedder to compare: the row label, what the user gave, the model and its folder."""

    label: str
    spec: str
    embedder: Embedder
    folder: Path | None = None


def resolve_embedder(spec: str, threads: int | None = None) -> Entry:
    """A registry name or a saved-model folder as an :class:`Entry`.

    Names: ``NAME``, ``NAME@SIZE`` (the input size option) or ``NAME:key=value:...`` (values are
    JSON when they parse as JSON). A folder must hold ``config.json`` (as written by ``save``);
    ``FOLDER:key=value:...`` overrides inference-time settings of the saved config (e.g.
    ``test_time_flip=true``). Embedders that need training must come as folders.
    """
    from lookalike.models.base import load

    path = Path(spec).expanduser()
    pairs: list[str] = []
    if not path.is_dir() and ":" in spec:  # FOLDER:key=value:...
        head, *rest = spec.split(":")
        if Path(head).expanduser().is_dir():
            path, pairs = Path(head).expanduser(), rest
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ReportError(f"{spec}: folder has no {CONFIG_FILE}; not a saved lookalike model")
        _refuse_text(json.loads((path / CONFIG_FILE).read_text()).get("kind"), spec)
        embedder = load(path, **_parse_options(pairs, spec))
        _set_threads(embedder, threads)
        label = _folder_label(embedder, path) + "".join(f" {pair}" for pair in pairs)
        return Entry(label, spec, embedder, path)
    name, *pairs = spec.split(":")
    name, _, size = name.partition("@")
    _refuse_text(name, spec)
    if name not in available():
        raise UnknownNameError(f"unknown embedder {spec!r}: neither a registered name "
                               f"({', '.join(available())}) nor a folder with {CONFIG_FILE}")
    cls = embedder_class(name)
    options = _parse_options(pairs, spec)
    parameters = inspect.signature(cls.__init__).parameters
    if size:
        key = next((k for k in ("image_size", "size") if k in parameters), None)
        if key is None or not size.isdigit():
            raise ReportError(f"embedder {spec!r}: {name} takes no input size @{size}")
        options[key] = int(size)
    if threads is not None and "num_threads" in parameters and "num_threads" not in options:
        options["num_threads"] = threads  # not part of the config, so the embedder id stays
    try:
        embedder = cls(**options)
    except TypeError as error:
        raise ReportError(f"embedder {spec!r}: {error}") from None
    if embedder.needs_fit:
        raise ReportError(f"embedder {spec!r} must be trained first: train it and give the "
                          "saved folder instead (or --models-dir)")
    return Entry(spec, spec, embedder)


def _parse_options(pairs: Sequence[str], spec: str) -> dict[str, Any]:
    """``key=value`` pairs as a dict; values are JSON when they parse as JSON."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ReportError(f"embedder {spec!r}: options are key=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _refuse_text(kind: str | None, spec: str) -> None:
    """A text encoder's name or folder is a clear error here: the report compares images."""
    if kind in TEXT_ENCODERS:
        raise ReportError(f"embedder {spec!r} is a text model, not an image embedder")


def _set_threads(embedder: Embedder, threads: int | None) -> None:
    if threads is not None and getattr(embedder, "num_threads", False) is None:
        embedder.num_threads = threads  # ONNX Runtime sessions are built on first use


def _folder_label(embedder: Embedder, folder: Path) -> str:
    """``name (folder)``: the model's own name, and where it came from for same-named models
    (the parent folder's name when the folder itself is just called ``model``)."""
    where = folder.parent.name if folder.name in ("model", "embedder") else folder.name
    return f"{embedder.name} ({where})"


def find_saved_models(folder: str | Path) -> tuple[list[Path], list[str]]:
    """Every saved image-embedder folder below ``folder`` (one per ``embedder_id``), and notes on
    folders skipped (unknown kind, text models, duplicates, unreadable)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ReportError(f"--models-dir {folder}: no such folder")
    found: list[Path] = []
    skipped: list[str] = []
    seen: dict[str, Path] = {}
    for config in sorted(root.rglob(CONFIG_FILE)):
        try:
            meta = json.loads(config.read_text())
            kind = meta.get("kind")
        except (OSError, ValueError, AttributeError):
            skipped.append(f"{config.parent}: unreadable {CONFIG_FILE}")
            continue
        if kind in TEXT_ENCODERS:
            skipped.append(f"{config.parent}: {kind} is not an image embedder")
            continue
        if kind not in available():
            continue  # not a lookalike model (an index manifest, a training config...)
        if not (config.parent / WEIGHTS_FILE).is_file() and embedder_class(kind).needs_fit:
            skipped.append(f"{config.parent}: {kind} without weights (untrained)")
            continue
        key = str(meta.get("embedder_id") or config.parent)
        if key in seen:
            skipped.append(f"{config.parent}: same model as {seen[key]}")
            continue
        seen[key] = config.parent
        found.append(config.parent)
    return found, skipped


def input_shape(embedder: Embedder) -> tuple[int, tuple[int, int]] | None:
    """(channels, (width, height)) a learned embedder was built for, from its config (or its
    base's); None when it takes any image (fixed embedders, or no such settings)."""
    if not embedder.needs_fit:
        return None
    config: dict[str, Any] | None = embedder.config()
    while config:
        size, channels = config.get("image_size"), config.get("channels")
        if isinstance(size, (list, tuple)) and len(size) == 2 and channels in (1, 3):
            return int(channels), (int(size[0]), int(size[1]))
        config = config.get("base_config")
    return None


def fits(embedder: Embedder, catalogue: Catalogue) -> bool:
    """Whether ``embedder`` can be evaluated on ``catalogue`` (its input is the catalogue's)."""
    shape = input_shape(embedder)
    return shape is None or shape == (catalogue.channels, catalogue.size)


def model_size_mb(entry: Entry) -> float:
    """Size of the model as saved (``config.json`` + ``weights.safetensors``) in MB."""

    def size_of(folder: Path) -> int:
        return sum((folder / name).stat().st_size for name in (CONFIG_FILE, WEIGHTS_FILE)
                   if (folder / name).is_file())

    if entry.folder is not None:
        return size_of(entry.folder) / 1e6
    with tempfile.TemporaryDirectory(prefix="lookalike-size-") as tmp:
        entry.embedder.save(tmp)
        return size_of(Path(tmp)) / 1e6


