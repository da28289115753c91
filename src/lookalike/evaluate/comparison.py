"""Embedders side by side (``lookalike report``): quality, speed, size and memory in one table.

For each catalogue protocol (test queries against the train gallery, relevant = same class) and
each embedder -- a registry name (``pixels``, ``efficientnet-lite0@112``,
``lsh:base=pixels:bits=64``) or a folder saved with ``Embedder.save`` -- :func:`compare` measures:

- **quality**: P@10 and mAP@100 with :func:`~lookalike.evaluate.retrieval.evaluate_retrieval`
  (FAISS exact search, queries in blocks). Embedders that make binary codes (they have a
  ``coder()``: ``cnn-hash``, ``lsh``) get two rows instead: Hamming search over the codes in the
  ``binary`` index, and Hamming top-``candidates`` re-ranked by the float features (paper 000,
  eqs. 7-8). A learned embedder whose input (channels, size) is not the catalogue's is "n/a"
  there: a 28x28 grey Fashion-MNIST CNN says nothing about 60x80 colour photos.
- **speed**: CPU ms per image at batch 1 and images/s at batch 64 on decoded images, measured in
  this run with ``threads`` threads; the 1-minute load average is recorded beside each.
- **size**: MB of the saved model folder (``config.json`` + ``weights.safetensors``), dimension,
  and bytes per indexed item (float32 rows: ``4 * dim``; codes: ``bits / 8``, plus the floats on
  disk when re-ranking).
- **precision against catalogue size** (paper 000, Fig. 6): P@10 with seeded gallery subsets.

Embeddings of whole splits are cached as ``.npy`` files keyed by catalogue, sample and
``embedder_id`` (the naming of ``benchmarks/quality.py``, so the two share a cache folder) and
written chunk by chunk into a memory map; metrics are cached as small JSON files, so a re-run
only re-times. Nothing holds an ``n_queries x n_gallery`` matrix.

Output files (Markdown, JSON, PNG plots, an HTML page) come from
:func:`lookalike.evaluate.comparison_pages.write_report`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.models.base import CONFIG_FILE, WEIGHTS_FILE, Embedder, available, embedder_class
from lookalike.threads import compute_threads

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
        embedder = load(path, **_parse_options(pairs, spec))
        _check_images(embedder, spec)
        _set_threads(embedder, threads)
        label = _folder_label(embedder, path) + "".join(f" {pair}" for pair in pairs)
        return Entry(label, spec, embedder, path)
    name, *pairs = spec.split(":")
    name, _, size = name.partition("@")
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
    _check_images(embedder, spec)
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


def _check_images(embedder: Embedder, spec: str) -> None:
    if getattr(embedder, "modality", "image") != "image":
        raise ReportError(f"embedder {spec!r} is a {embedder.modality} model, not an image "
                          "embedder")


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
        if kind not in available():
            continue  # not a lookalike model (an index manifest, a training config...)
        if getattr(embedder_class(kind), "modality", "image") != "image":
            skipped.append(f"{config.parent}: {kind} is not an image embedder")
            continue
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


# ---- embeddings with a cache --------------------------------------------------------------------
def cached_embeddings(embedder: Embedder, catalogue: Catalogue, side: str, cache_dir: str | Path,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 ``[n, dim]`` unit rows of one side (``queries`` / ``gallery``), memory-mapped from
    ``cache_dir``.

    The first call embeds ``_PART_ROWS`` rows at a time into part files, so an interrupted run
    keeps its finished parts and the next one resumes; the parts are then joined into one
    ``.npy`` (through a memory map, never a second copy in RAM) and removed.
    """
    part: Side = getattr(catalogue, side)
    cache = Path(cache_dir)
    stem = f"{catalogue.name}-{side}-{part.sample_key}-{embedder.embedder_id}"
    path = cache / f"{stem}.npy"
    shape = (len(part), embedder.dim)
    if path.is_file():
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        if vectors.shape == shape and vectors.dtype == np.float32:
            if progress:
                progress(len(part))
            return vectors
    from lookalike.models.reduction import ReducedEmbedder

    if isinstance(embedder, ReducedEmbedder):
        # PCA / projection are a linear map of their base's vectors: derive them from the base's
        # cached rows instead of running the network again (minutes -> a second).
        base = cached_embeddings(embedder.base, catalogue, side, cache_dir, progress)
        cache.mkdir(parents=True, exist_ok=True)
        _save_atomically(path, np.concatenate(
            [embedder.project(base[start:start + _PART_ROWS])
             for start in range(0, len(base), _PART_ROWS)] or [np.zeros(shape, np.float32)]))
        return np.load(path, mmap_mode="r", allow_pickle=False)
    parts = cache / f".{stem}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    if not (cache / ".gitignore").exists():
        (cache / ".gitignore").write_text("*\n")  # derived data, never committed
    starts = range(0, len(part), _PART_ROWS)
    for start in starts:
        stop = min(start + _PART_ROWS, len(part))
        part_path = parts / f"{start:09d}.npy"
        if part_path.is_file() and np.load(part_path, mmap_mode="r").shape == (stop - start,
                                                                               shape[1]):
            if progress:
                progress(stop - start)
            continue
        block = np.concatenate([
            _embed(embedder, part.images(range(first, min(first + _EMBED_CHUNK, stop))),
                   progress) for first in range(start, stop, _EMBED_CHUNK)])
        _save_atomically(part_path, block.astype(np.float32, copy=False))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for start in starts:
            rows = np.load(parts / f"{start:09d}.npy", mmap_mode="r")
            out[start:start + len(rows)] = rows
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _embed(embedder: Embedder, images: Iterator[Any],
           progress: Callable[[int], None] | None) -> np.ndarray:
    """``embedder.embed`` with the progress callback when its ``embed`` takes one."""
    if progress is not None and "progress" in inspect.signature(embedder.embed).parameters:
        return embedder.embed(images, progress=progress)
    images = list(images)
    vectors = embedder.embed(images)
    if progress is not None:
        progress(len(images))
    return vectors


def _save_atomically(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


# ---- speed --------------------------------------------------------------------------------------
def measure_speed(embedder: Embedder, images: Sequence[Any], batch: int = 64,
                  single_budget_s: float = 8.0, max_single: int = 32) -> dict[str, float]:
    """Wall-clock ms per image at batch 1 (and the process CPU ms) and images/s at batch
    ``batch`` on decoded ``images``.

    One warm-up call first (weights, ONNX sessions). Batch 1 runs up to ``max_single`` images
    or ``single_budget_s`` seconds; batched, up to two batches (one when the first is slow).
    Threads are whatever the caller set (see :func:`compare`).
    """
    if not images:
        raise ReportError("no images to time the embedder on")
    embedder.embed(list(images[:2]), batch_size=2)
    started, cpu_started, done = time.perf_counter(), time.process_time(), 0
    for image in images[:max_single]:
        embedder.embed([image], batch_size=1)
        done += 1
        if time.perf_counter() - started > single_budget_s and done >= 3:
            break
    single = (time.perf_counter() - started) / done
    # CPU time of all this process's threads: less sensitive to other jobs than wall time.
    single_cpu = (time.process_time() - cpu_started) / done
    batches = [list(images[s:s + batch]) for s in range(0, min(len(images), 2 * batch), batch)]
    started, timed = time.perf_counter(), 0
    for chunk in batches:
        embedder.embed(chunk, batch_size=batch)
        timed += len(chunk)
        if time.perf_counter() - started > 2 * single_budget_s:
            break
    return {"ms_per_image_batch1": 1000 * single, "cpu_ms_per_image_batch1": 1000 * single_cpu,
            "images_per_s_batch64": timed / (time.perf_counter() - started),
            "timed_batch1": done, "timed_batched": timed}


# ---- quality ------------------------------------------------------------------------------------
def float_metrics(queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                  gallery_labels: np.ndarray, class_column: str) -> dict[str, float]:
    """P@1, P@10, mAP@100, NDCG@10... of exact cosine search (the :func:`evaluate_retrieval`
    values)."""
    from lookalike.evaluate.retrieval import evaluate_retrieval

    report = evaluate_retrieval(np.asarray(queries), query_labels, np.asarray(gallery),
                                gallery_labels, class_column=class_column, **METRICS)
    return {**report.metrics, "queries": report.n_queries, "gallery": report.n_gallery,
            "no_relevant": report.queries_without_relevant}


def code_metrics(coder: Any, queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                 gallery_labels: np.ndarray, rerank: bool, candidates: int = 100,
                 block: int = 1024) -> dict[str, float]:
    """The same metrics through the ``binary`` index: Hamming search over ``coder``'s codes of
    the float rows, optionally re-ranking the top ``candidates`` by Euclidean distance."""
    import lookalike.evaluate.metrics as m
    from lookalike.index.base import create_index

    gallery = np.asarray(gallery)
    index = create_index("binary", gallery.shape[1], coder=coder, rerank=rerank,
                         store_vectors=rerank, candidates=candidates)
    ids = [str(i) for i in range(len(gallery))]
    for start in range(0, len(ids), 8192):
        index.add(ids[start:start + 8192], np.asarray(gallery[start:start + 8192]))
    classes, codes = np.unique(np.concatenate([np.asarray(gallery_labels, dtype=str),
                                               np.asarray(query_labels, dtype=str)]),
                               return_inverse=True)
    gallery_codes, query_codes = codes[:len(gallery)], codes[len(gallery):]
    n_relevant = np.bincount(gallery_codes, minlength=len(classes))[query_codes]
    depth = max(*METRICS["ks"], METRICS["map_at"], METRICS["ndcg_at"])
    values: dict[str, list[np.ndarray]] = {}
    queries = np.asarray(queries)
    started = time.perf_counter()
    for start in range(0, len(queries), block):
        hits = index.search(np.asarray(queries[start:start + block]), depth)
        relevant = np.zeros((len(hits), depth), dtype=bool)
        for row, result in enumerate(hits):
            found = np.fromiter((int(i) for i in result.ids), dtype=np.int64)
            relevant[row, :len(found)] = gallery_codes[found] == query_codes[start + row]
        for name, per_query in m.per_query_metrics(relevant, n_relevant[start:start + block],
                                                   **METRICS).items():
            values.setdefault(name, []).append(per_query)
    seconds = time.perf_counter() - started
    means = {name: float(np.concatenate(parts).mean()) for name, parts in values.items()}
    return {**means, "queries": len(queries), "gallery": len(gallery),
            "no_relevant": int((n_relevant == 0).sum()),
            "queries_per_s": len(queries) / seconds if seconds else None}


def _cached_metrics(cache_dir: Path, key: dict[str, Any],
                    compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s result, stored as JSON under a hash of ``key`` so re-runs skip it."""
    key = json.loads(json.dumps(key))  # tuples become lists, as they come back from the file
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / "report-metrics" / f"{digest}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["metrics"]
        except (OSError, ValueError):
            pass
    result = compute()
    from lookalike.storage import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, "metrics": result}, default=float))
    return result


# ---- the run ------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """What :func:`compare` measured; :func:`~lookalike.evaluate.comparison_pages.write_report`
    writes it out.

    ``rows``: one per embedder and search (``exact``, ``hamming``, ``hamming + re-rank``), with
    ``"<catalogue> P@10"`` / ``"<catalogue> mAP@100"`` (None where the embedder does not fit,
    the reason in ``not_applicable``). ``size_rows``: P@10 per catalogue, embedder and gallery
    size. ``activation``: the activation study (see :mod:`lookalike.evaluate.activation`).
    """

    rows: list[dict[str, Any]]
    size_rows: list[dict[str, Any]]
    catalogues: list[dict[str, Any]]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    activation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "catalogues": self.catalogues, "rows": self.rows,
                "catalogue_size": self.size_rows, "notes": self.notes,
                "activation_study": self.activation}


class _Progress:
    """Rich progress on stderr (or nothing): one line per step, a bar per embedding pass."""

    def __init__(self, enabled: bool) -> None:
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, log_path=False)

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.log(message, highlight=False)

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[[int], None] | None]:
        if self.console is None:
            yield None
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def default_cache_dir() -> Path:
    """``$LOOKALIKE_CACHE_DIR/report``, else ``$XDG_CACHE_HOME/lookalike/report`` (or
    ``~/.cache/lookalike/report``)."""
    if os.environ.get("LOOKALIKE_CACHE_DIR"):
        return Path(os.environ["LOOKALIKE_CACHE_DIR"]) / "report"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lookalike" / "report"


def parse_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1000,5000"`` (or ints) as sorted unique positive gallery sizes; a clear error else."""
    items = text.split(",") if isinstance(text, str) else list(text)
    sizes = []
    for item in items:
        item = str(item).strip().replace("_", "")
        if not item:
            continue
        if item.lower().endswith("k") and item[:-1].isdigit():
            item = str(int(item[:-1]) * 1000)
        if not item.isdigit() or int(item) < 1:
            raise ReportError(f"--sizes: {item!r} is not a positive whole number of items")
        sizes.append(int(item))
    return tuple(sorted(set(sizes)))


def compare(catalogues: Sequence[str] = ALL_CATALOGUES,
            embedders: Sequence[str] = DEFAULT_EMBEDDERS,
            models_dirs: Sequence[str | Path] = (), sizes: Sequence[int] = DEFAULT_SIZES, *,
            cache_dir: str | Path | None = None, quick: bool = False, threads: int = 2,
            candidates: int = 100, seed: int = 0, products_path: str | Path | None = None,
            progress: bool = False) -> Comparison:
    """Measure every embedder on every catalogue (see the module docstring); raw pixels is
    always included as the baseline. Unknown names or bad folders fail before any work."""
    report = _Progress(progress)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sizes = parse_sizes(sizes)
    names = [BASELINE] + [e for e in embedders if e != BASELINE]
    notes: list[str] = []
    folders: list[Path] = []
    for models_dir in models_dirs:
        found, skipped = find_saved_models(models_dir)
        folders += found
        notes += [f"skipped {line}" for line in skipped]
        if not found:
            notes.append(f"--models-dir {models_dir}: no saved image embedders found")
    entries: list[Entry] = []
    seen: set[str] = set()
    for spec in [*names, *map(str, folders)]:
        entry = resolve_embedder(spec, threads)
        if entry.embedder.embedder_id in seen:
            continue
        seen.add(entry.embedder.embedder_id)
        entries.append(entry)
    loaded = [load_catalogue(name, quick, products_path) for name in dict.fromkeys(catalogues)]

    rows: list[dict[str, Any]] = []
    size_rows: list[dict[str, Any]] = []
    with compute_threads(threads):
        for entry in entries:
            rows += _measure_entry(entry, loaded, sizes, cache, candidates, seed, threads,
                                   report, size_rows)
    settings = {"catalogues": [c.name for c in loaded], "quick": quick, "threads": threads,
                "sizes": list(sizes), "candidates": candidates, "seed": seed,
                "cache_dir": str(cache), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "cpus": os.cpu_count(), "search": "FAISS exact inner product (cosine); binary "
                "index for codes", "timing": "decoded images, warm model; batch 1 and batch 64",
                "load_average_range": _load_range(rows)}
    described = [{"name": c.name, "class_column": c.class_column, "queries": len(c.queries),
                  "gallery": len(c.gallery), "channels": c.channels, "size": list(c.size)}
                 for c in loaded]
    return Comparison(rows, size_rows, described, settings, notes)


def _load_range(rows: Sequence[dict[str, Any]]) -> list[float] | None:
    loads = [r["load_1m"] for r in rows if r.get("load_1m") is not None]
    return [min(loads), max(loads)] if loads else None


def _measure_entry(entry: Entry, catalogues: Sequence[Catalogue], sizes: Sequence[int],
                   cache: Path, candidates: int, seed: int, threads: int, report: _Progress,
                   size_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    embedder = entry.embedder
    usable = [c for c in catalogues if fits(embedder, c)]
    report.log(f"{entry.label}: {embedder.dim}-d, evaluated on "
               f"{', '.join(c.name for c in usable) or 'nothing (input does not fit)'}")
    base = {"embedder": entry.label, "kind": embedder.kind, "embedder_id": embedder.embedder_id,
            "source": entry.spec, "config": _config_summary(embedder.config()),
            "dim": embedder.dim, "size_mb": model_size_mb(entry)}
    speed: dict[str, Any] = {}
    if usable:
        sample = list(usable[0].queries.images(range(min(128, len(usable[0].queries)))))
        load_before = os.getloadavg()[0]
        speed = measure_speed(embedder, sample)
        speed.update(load_1m=round(max(load_before, os.getloadavg()[0]), 2),
                     timed_on=usable[0].name, threads=threads)
    coder = embedder.coder() if callable(getattr(embedder, "coder", None)) else None
    searches = (["exact"] if coder is None else
                ["hamming", f"hamming top-{candidates} + re-rank"])
    rows = []
    for search in searches:
        row = dict(base, search=search, **speed)
        if coder is None:
            row["bytes_per_item"] = 4 * embedder.dim
        else:
            row.update(dim=coder.bits, float_dim=embedder.dim, bytes_per_item=coder.bits // 8)
            if search != "hamming":
                row["disk_bytes_per_item"] = 4 * embedder.dim  # floats read for re-ranking
        row["not_applicable"] = {}
        rows.append(row)
    for catalogue in catalogues:
        if catalogue not in usable:
            shape = input_shape(embedder)
            reason = (f"model input {shape[0]}x{shape[1][0]}x{shape[1][1]}, catalogue "
                      f"{catalogue.channels}x{catalogue.size[0]}x{catalogue.size[1]}"
                      if shape else "input does not fit")
            for row in rows:
                row[f"{catalogue.name} P@10"] = row[f"{catalogue.name} mAP@100"] = None
                row["not_applicable"][catalogue.name] = reason
            continue
        vectors = {}
        for side in ("queries", "gallery"):
            part = getattr(catalogue, side)
            with report.bar(f"{entry.label}: {catalogue.name} {side}", len(part)) as advance:
                vectors[side] = cached_embeddings(embedder, catalogue, side, cache, advance)
        key = {"catalogue": catalogue.name, "queries": catalogue.queries.sample_key,
               "gallery": catalogue.gallery.sample_key, "embedder_id": embedder.embedder_id,
               "metrics": METRICS}
        for row, search in zip(rows, searches):
            started = time.perf_counter()
            if coder is None:
                found = _cached_metrics(cache, {**key, "search": "exact"}, lambda: float_metrics(
                    vectors["queries"], catalogue.queries.labels, vectors["gallery"],
                    catalogue.gallery.labels, catalogue.class_column))
            else:
                rerank = search != "hamming"
                found = _cached_metrics(
                    cache, {**key, "search": search, "coder": _coder_digest(coder)},
                    lambda rerank=rerank: code_metrics(
                        coder, vectors["queries"], catalogue.queries.labels, vectors["gallery"],
                        catalogue.gallery.labels, rerank, candidates))
            row[f"{catalogue.name} P@10"] = found["P@10"]
            row[f"{catalogue.name} mAP@100"] = found["mAP@100"]
            row.setdefault("metrics", {})[catalogue.name] = found
            report.log(f"  {catalogue.name} {search}: P@10 {found['P@10']:.3f} mAP@100 "
                       f"{found['mAP@100']:.3f} ({time.perf_counter() - started:.1f} s)")
        if coder is None:
            size_rows += _size_study(entry, catalogue, vectors, sizes, seed, cache, key,
                                     rows[0]["metrics"][catalogue.name])
    return rows


def _config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The embedder's settings for the JSON, without long lists (class names, statistics)."""
    return {key: (f"[{len(value)} values]" if isinstance(value, (list, tuple)) and len(value) > 8
                  else _config_summary(value) if isinstance(value, dict) else value)
            for key, value in config.items()}


def _coder_digest(coder: Any) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(coder.planes).tobytes())
    digest.update(np.ascontiguousarray(coder.offsets).tobytes())
    return digest.hexdigest()[:16]


def _size_study(entry: Entry, catalogue: Catalogue, vectors: dict[str, np.ndarray],
                sizes: Sequence[int], seed: int, cache: Path, key: dict[str, Any],
                full: dict[str, Any]) -> list[dict[str, Any]]:
    """P@10 with seeded gallery subsets of each size (the same subset for every embedder)."""
    n = len(catalogue.gallery)
    rows = []
    for size in [s for s in sizes if s < n]:
        subset = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))

        def compute(subset: np.ndarray = subset) -> dict[str, Any]:
            return float_metrics(vectors["queries"], catalogue.queries.labels,
                                 np.asarray(vectors["gallery"][subset]),
                                 catalogue.gallery.labels[subset], catalogue.class_column)

        found = _cached_metrics(cache, {**key, "search": "exact", "subset": size, "seed": seed},
                                compute)
        rows.append({"catalogue": catalogue.name, "embedder": entry.label, "gallery": size,
                     "P@10": found["P@10"], "mAP@100": found["mAP@100"]})
    rows.append({"catalogue": catalogue.name, "embedder": entry.label, "gallery": n,
                 "P@10": full["P@10"], "mAP@100": full["mAP@100"]})
    return rows
