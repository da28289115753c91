"""The Milvus collection a ``milvus`` index lives in: its schema, its rows and its description.

One collection per index. Fields:

==========  ==================  ==========================================================
id          VARCHAR (primary)   the lookalike item id
vector      FLOAT_VECTOR(dim)   the L2-normalised embedding (HNSW, COSINE); in a
                                ``milvus-binary`` collection BINARY_VECTOR(bits), the hash code
floats      ARRAY(FLOAT, dim)   ``milvus-binary`` only: the unit vector, for the re-rank
category,   VARCHAR             ``str(value)``; missing = ``"\\x00"`` (Milvus 2.3 has no
gender,                         nullable fields)
colour
title,      VARCHAR             shown with a result when the caller passes them as
image                           attributes (an API worker can answer from Milvus alone)
price       DOUBLE              missing = NaN (compares false with every bound)
attrs       JSON                ``{"v": every attribute as given, "s": {name: str(value)},
                                "n": {name: float(value) where finite}}``
==========  ==================  ==========================================================

The collection *description* and its ``lookalike.meta`` property hold a JSON object naming the
embedder id, the dimension and a random ``token`` written once at creation; ``index.json`` holds the same token, so a collection
dropped and rebuilt by someone else is told apart from the one an index was saved with.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.index.milvus_filters import (ATTRS_FIELD, ID_FIELD, MISSING_TEXT, NUMBER_FIELDS,
                                            TEXT_FIELDS)

VECTOR_FIELD = "vector"
FLOATS_FIELD = "floats"  # the float vectors of a binary-code collection
MAX_ARRAY = 4096  # Milvus' largest ARRAY capacity
MAX_ID_LENGTH = 1024
MAX_TEXT_LENGTH = {"category": 1024, "gender": 1024, "colour": 1024, "title": 8192,
                   "image": 8192}
DESCRIPTION_FORMAT = "lookalike-milvus-1"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def check_collection_name(name: str) -> str:
    """A valid Milvus collection name (letters, digits, underscores; not starting with a digit)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise LookalikeError(f"milvus collection name {name!r} is not valid: use letters, digits "
                             "and underscores, starting with a letter or underscore")
    return name


def make_schema(dim: int, description: str, binary_bits: int | None = None,
                floats: bool = True) -> Any:
    """The collection schema (see the module docstring). With ``binary_bits`` the vector field
    is a BINARY_VECTOR of that many bits and the float vectors go to ``floats``, an ARRAY of
    ``dim`` FLOATs (Milvus 2.3 allows one vector field per collection), unless ``floats`` is
    False."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                        description=description)
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
    if binary_bits is None:
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=int(dim))
    else:
        if floats and int(dim) > MAX_ARRAY:
            raise LookalikeError(f"milvus binary index: float vectors of at most {MAX_ARRAY} "
                                 f"dimensions (a Milvus ARRAY's capacity), got {dim}")
        schema.add_field(VECTOR_FIELD, DataType.BINARY_VECTOR, dim=int(binary_bits))
        if floats:
            schema.add_field(FLOATS_FIELD, DataType.ARRAY, element_type=DataType.FLOAT,
                             max_capacity=int(dim))
    for name in TEXT_FIELDS:
        schema.add_field(name, DataType.VARCHAR, max_length=MAX_TEXT_LENGTH[name])
    for name in NUMBER_FIELDS:
        schema.add_field(name, DataType.DOUBLE)
    schema.add_field(ATTRS_FIELD, DataType.JSON)
    return schema


def describe(embedder_id: str, dim: int, token: str) -> str:
    return json.dumps({"format": DESCRIPTION_FORMAT, "embedder_id": embedder_id, "dim": int(dim),
                       "token": token}, sort_keys=True)


META_PROPERTY = "lookalike.meta"


def read_meta(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The lookalike metadata of a described collection (the ``lookalike.meta`` property, else
    the description; milvus-lite keeps properties but drops descriptions), or None if lookalike
    did not make it."""
    for text in ((info.get("properties") or {}).get(META_PROPERTY), info.get("description")):
        try:
            data = json.loads(text or "")
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("format") == DESCRIPTION_FORMAT:
            return data
    return None


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def make_row(item_id: str, vector: np.ndarray, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """One collection row; raises a one-line error for values the schema cannot hold."""
    if len(item_id) > MAX_ID_LENGTH:
        raise LookalikeError(f"milvus index: id {item_id[:40]!r}... is longer than "
                             f"{MAX_ID_LENGTH} characters")
    present = {k: v for k, v in attributes.items() if v is not None}
    row: dict[str, Any] = {ID_FIELD: item_id, VECTOR_FIELD: vector}
    for name in TEXT_FIELDS:
        text = str(present[name]) if name in present else MISSING_TEXT
        if name in present and text == MISSING_TEXT:
            raise LookalikeError(f"milvus index: attribute {name!r} of {item_id!r} is the "
                                 "reserved missing-value marker (a single NUL character)")
        if len(text) > MAX_TEXT_LENGTH[name]:
            raise LookalikeError(f"milvus index: attribute {name!r} of {item_id!r} is longer "
                                 f"than {MAX_TEXT_LENGTH[name]} characters")
        row[name] = text
    for name in NUMBER_FIELDS:  # float(value) as Filters.matches reads it; NaN when missing
        row[name] = _as_float(present.get(name))
    row[ATTRS_FIELD] = {
        "v": {k: (v if _json_safe(v) else str(v)) for k, v in present.items()},
        "s": {k: str(v) for k, v in present.items()},
        "n": {k: n for k, n in ((k, _finite_number(v)) for k, v in present.items())
              if n is not None},
    }
    return row


def _json_safe(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def make_rows(ids: Sequence[str], vectors: np.ndarray,
              attributes: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [make_row(item_id, vectors[n], {} if attributes is None else attributes[n])
            for n, item_id in enumerate(ids)]


def attributes_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes an item was added with (from a queried row's ``attrs`` field)."""
    stored = row.get(ATTRS_FIELD) or {}
    return dict(stored.get("v", {}))
