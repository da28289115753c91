"""Where catalogue items come from: a folder of images, a manifest, or a named catalogue.

:func:`open_source` turns any of them into a :class:`CatalogueSource`: a sized iterable of
:class:`SourceRecord` with unique ids (a manifest row repeating an earlier id is set aside in
``duplicates``, for ingest to reject by row).
Records carry the raw image (bytes, or a path that is read later); decoding is the ingest's job,
so a bad image never stops a source from being listed.

Sources
  * a folder (:mod:`lookalike.catalogue.folders`): every file below it, recursively (hidden
    files and folders skipped); the first sub-folder is the category; id = relative path
    without the extension, or with it where two files share a stem (unique by construction).
  * a manifest ``.csv``, ``.jsonl`` or ``.parquet`` with columns ``id`` and ``image`` (a path
    relative to the manifest, an absolute path, or in Parquet inline image bytes) and optionally
    ``title``, ``category``, ``gender``, ``colour``, ``price``, ``split``; every other column is
    kept in ``attributes``. Columns named as in the products catalogue are understood too:
    ``image_jpeg`` for ``image``, ``base_colour`` for ``colour`` and ``article_type`` for
    ``category`` (``article_type`` also stays an attribute).
  * named catalogues: ``demo`` (bundled), ``products`` (the full products Parquet),
    ``fashion-mnist`` (Debian's IDX files). ``products:train``, ``fashion-mnist:test`` etc. take
    one split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.catalogue.folders import FolderSource, StoredHashes
from lookalike.catalogue.named import (  # noqa: F401  (re-exported)
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    PRODUCTS_ENV,
    PRODUCTS_FILE,
    PRODUCTS_SEARCH_ENV,
    FashionMNISTSource,
    demo_parquet,
    fashion_mnist_dir,
    find_products_parquet,
    load_fashion_mnist,
    load_products_frame,
    products_search_roots,
    require_products_parquet,
)
from lookalike.catalogue.records import CatalogueSource, SourceRecord
from lookalike.errors import CatalogueError, UnknownNameError

__all__ = ["CatalogueSource", "FolderSource", "ManifestSource", "FashionMNISTSource",
           "SourceRecord", "open_source", "open_named", "demo_parquet", "find_products_parquet",
           "require_products_parquet", "load_products_frame", "load_fashion_mnist"]

NAMED_CATALOGUES = ("demo", "products", "fashion-mnist")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")

#: Manifest columns with a meaning of their own; every other column goes to ``attributes``.
STANDARD_COLUMNS = ("id", "image", "title", "category", "gender", "colour", "price", "split")
#: Products-catalogue column names understood when the standard name is absent.
#: (``article_type`` is the class the evaluation protocol uses, so it is the natural category.)
COLUMN_ALIASES = {"image": "image_jpeg", "colour": "base_colour", "category": "article_type"}
_KEEP_AS_ATTRIBUTE = {"article_type"}


def open_source(source: str | Path, stored: StoredHashes | None = None) -> CatalogueSource:
    """Open a folder, a manifest file or a named catalogue (see the module docstring).

    A plain string that is a catalogue name (``demo``, ``products``, ``fashion-mnist``, optionally
    with ``:train`` / ``:test``) means that catalogue; write ``./demo`` for a folder called demo.
    ``stored`` (a store's ``source_hashes``) keeps a folder's ids stable against that catalogue
    (see :mod:`lookalike.catalogue.folders`).
    """
    if isinstance(source, str):
        name, _, split = source.partition(":")
        if name in NAMED_CATALOGUES:
            return open_named(name, split or None)
    path = Path(source).expanduser()
    if path.is_dir():
        return FolderSource(path, stored)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return ManifestSource(path)
        raise CatalogueError(f"{path}: not a catalogue source; give a folder of images or a "
                             f"manifest ({', '.join(MANIFEST_SUFFIXES)})")
    raise CatalogueError(f"{source}: no such folder or manifest, and not a catalogue name "
                         f"({', '.join(NAMED_CATALOGUES)})")


def open_named(name: str, split: str | None = None) -> CatalogueSource:
    """A named catalogue, optionally one split of it (``train`` / ``test``)."""
    if split not in (None, "train", "test"):
        raise CatalogueError(f"{name}:{split}: unknown split {split!r}; use train or test")
    if name == "demo":
        return ManifestSource(demo_parquet(), split=split, name="demo")
    if name == "products":
        return ManifestSource(require_products_parquet(), split=split, name="products")
    if name == "fashion-mnist":
        return FashionMNISTSource(split)
    raise UnknownNameError(f"unknown catalogue {name!r}; named catalogues: "
                           f"{', '.join(NAMED_CATALOGUES)}")


# ---- manifests ----------------------------------------------------------------------
class ManifestSource(CatalogueSource):
    """Records from a ``.csv``, ``.jsonl`` or ``.parquet`` manifest (see the module docstring).

    Everything is validated when the source is opened: required columns, ids present and unique,
    prices numeric. Errors name the file, the rows and the columns.
    """

    def __init__(self, path: str | Path, split: str | None = None,
                 name: str | None = None) -> None:
        path = Path(path)
        self.path = path
        label = path.name
        rows, columns = _read_manifest(path)
        mapping = _column_mapping(columns, label)
        records: list[SourceRecord] = []
        empty_ids: list[str] = []
        base = path.parent
        for where, row in rows:
            record = _record_from_row(row, mapping, f"{label}:{where}", base)
            if record is None:
                empty_ids.append(str(where))
                continue
            if split is None or record.split == split:
                records.append(record)
        if empty_ids:
            raise CatalogueError(f"{label}: empty id on row{'s' if len(empty_ids) > 1 else ''} "
                                 f"{_first(empty_ids)}")
        super().__init__(name or str(path), records)


def _read_manifest(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Rows as (row number for messages, dict) and the column names, whatever the format."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            import pandas as pd

            # Ids and text stay strings ("007" must not become 7); other columns are inferred.
            frame = pd.read_csv(path, dtype={c: str for c in (*STANDARD_COLUMNS, "image_jpeg",
                                                              "base_colour", "article_type")
                                             if c != "price"}, keep_default_na=False,
                                na_values=[""])
            columns = [str(c) for c in frame.columns]
            # Line numbers: the header is line 1.
            return [(i + 2, row) for i, row in enumerate(frame.to_dict("records"))], columns
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            columns = list(table.column_names)
            return [(i + 1, row) for i, row in enumerate(table.to_pylist())], columns
    except CatalogueError:
        raise
    except FileNotFoundError:
        raise CatalogueError(f"{path}: no such manifest") from None
    except Exception as error:  # pandas / pyarrow parse errors come in many classes
        raise CatalogueError(f"{path}: cannot read {suffix[1:]} manifest "
                             f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
    raise CatalogueError(f"{path}: unknown manifest type {suffix!r}; use "
                         f"{', '.join(MANIFEST_SUFFIXES)}")


def _read_jsonl(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    columns: dict[str, None] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise CatalogueError(f"{path.name}:{line_number}: not valid JSON ({error.msg})") \
                    from None
            if not isinstance(row, dict):
                raise CatalogueError(f"{path.name}:{line_number}: expected a JSON object per line")
            columns.update(dict.fromkeys(row))
            rows.append((line_number, row))
    return rows, list(columns)


def _column_mapping(columns: Sequence[str], label: str) -> dict[str, str]:
    """Standard name -> manifest column, after aliases; checks the required columns."""
    mapping = {name: name for name in STANDARD_COLUMNS if name in columns}
    for standard, alias in COLUMN_ALIASES.items():
        if standard not in mapping and alias in columns:
            mapping[standard] = alias
    missing = [name for name in ("id", "image") if name not in mapping]
    if missing:
        hint = " (or image_jpeg)" if "image" in missing else ""
        raise CatalogueError(
            f"{label}: missing required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}{hint}; it has columns: "
            f"{', '.join(map(str, columns)) or '(none)'}")
    return mapping


def _record_from_row(row: dict[str, Any], mapping: dict[str, str], where: str,
                     base: Path) -> SourceRecord | None:
    item_id = _text(row.get(mapping["id"]))
    if item_id is None:
        return None
    image = row.get(mapping["image"])
    if isinstance(image, (bytes, bytearray, memoryview)):
        image_value: bytes | Path | None = bytes(image)
    else:
        text = _text(image)
        image_value = None if text is None else (base / Path(text).expanduser())
    def cell(name: str) -> Any:
        return row.get(mapping[name]) if name in mapping else None

    used = set(mapping.values()) - _KEEP_AS_ATTRIBUTE
    attributes = {str(k): _json_value(v) for k, v in row.items() if k not in used}
    return SourceRecord(
        id=item_id, image=image_value, title=_text(cell("title")),
        category=_text(cell("category")), gender=_text(cell("gender")),
        colour=_text(cell("colour")), price=_price(cell("price"), where),
        split=_text(cell("split")),
        attributes={k: v for k, v in attributes.items() if v is not None}, row=where)


def _text(value: Any) -> str | None:
    """A trimmed string, or None for missing / empty / NaN values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an id column read as float
    text = str(value).strip()
    return text or None


def _price(value: Any, where: str) -> float | None:
    if _text(value) is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CatalogueError(f"{where}: price {value!r} is not a number") from None
    if math.isnan(number):
        return None
    return number


def _json_value(value: Any) -> Any:
    """A JSON-able version of one manifest cell (None for missing and binary values)."""
    if value is None or isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in value]
    return str(value)


def _first(values: Sequence[str], limit: int = 10) -> str:
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more
