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
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.threads import compute_threads
# The inputs and the measurements live in two modules of their own; every name stays importable
# from here.
from lookalike.evaluate.comparison_inputs import (  # noqa: F401  (re-exported)
    ALL_CATALOGUES,
    BASELINE,
    CATALOGUES,
    DEFAULT_EMBEDDERS,
    DEFAULT_SIZES,
    METRICS,
    QUICK_SIZES,
    Catalogue,
    Entry,
    ReportError,
    Side,
    find_saved_models,
    fits,
    input_shape,
    load_catalogue,
    model_size_mb,
    resolve_embedder,
)
from lookalike.evaluate.comparison_measure import (  # noqa: F401  (re-exported)
    _cached_metrics,
    cached_embeddings,
    code_metrics,
    float_metrics,
    measure_speed,
)


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
    rows, searches, coder = _entry_rows(entry, usable, threads, candidates)
    for catalogue in catalogues:
        if catalogue not in usable:
            _not_applicable(rows, catalogue, embedder)
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


def _entry_rows(entry: Entry, usable: Sequence[Catalogue], threads: int, candidates: int
                ) -> tuple[list[dict[str, Any]], list[str], Any]:
    """One row per search of an embedder (its settings, size and speed, timed on the first
    usable catalogue), the searches, and its binary coder (None for float vectors)."""
    embedder = entry.embedder
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
    return rows, searches, coder


def _not_applicable(rows: list[dict[str, Any]], catalogue: Catalogue, embedder: Any) -> None:
    """Mark a catalogue the embedder's input does not fit, with the reason."""
    shape = input_shape(embedder)
    reason = (f"model input {shape[0]}x{shape[1][0]}x{shape[1][1]}, catalogue "
              f"{catalogue.channels}x{catalogue.size[0]}x{catalogue.size[1]}"
              if shape else "input does not fit")
    for row in rows:
        row[f"{catalogue.name} P@10"] = row[f"{catalogue.name} mAP@100"] = None
        row["not_applicable"][catalogue.name] = reason


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
