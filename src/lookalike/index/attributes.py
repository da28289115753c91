"""The id and attribute table shared by the FAISS backends.

FAISS knows items only by an int64 *label*. This table maps string ids to labels and back, stores
each item's attributes column by column so a :class:`~lookalike.index.base.Filters` becomes one
vectorised boolean mask over labels, and remembers which labels are dead (removed or replaced).

Layout, chosen to stay small at a million items (a Python dict of a million strings alone costs
~130 MB, more than a third of the quantised HNSW index):

* ``ids``: a numpy ``StringDType`` array indexed by label (16 bytes a row for ids up to 15 bytes);
* id -> label lookup: a sorted copy of the live ids plus their labels, searched with
  ``np.searchsorted``, and a small dict of ids added since that copy was last rebuilt (rebuilt once
  the dict passes ``max(1024, n / 16)`` entries, so adding one item at a time stays cheap);
* ``alive``: a bool array; a removed label is dead until the owner compacts or reuses it;
* attribute columns of three kinds (all the same semantics as :meth:`Filters.matches`):
  ``text`` (str values: int32 codes into a category list), ``number`` (int/float values: float64
  plus a flag saying which rows were ints, because ``str(3) != str(3.0)``) and ``object`` (anything
  mixed, e.g. str and bool in one column: a Python object array, filtered by a loop).

Labels grow by appending. ``reuse_labels=True`` (the exact backend, whose FAISS index really
deletes) hands out removed labels again from a free list; the HNSW backend cannot delete graph
nodes, so it never reuses labels and instead calls :meth:`compact` when it rebuilds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.index.attribute_columns import (STRINGS, Column, columns_from_rows, grow,
                                               normalise_value, unique_last)
from lookalike.index.base import Filters


class AttributeTable:
    """String ids <-> int64 labels, liveness and columnar attributes (see the module docstring)."""

    def __init__(self, reuse_labels: bool) -> None:
        self.reuse_labels = reuse_labels
        self.size = 0  # label slots handed out so far (live + dead)
        self.ids_by_label = np.zeros(0, dtype=STRINGS)
        self.alive = np.zeros(0, dtype=bool)
        self.columns: dict[str, Column] = {}
        self.free: list[int] = []
        self._sorted_ids = np.zeros(0, dtype=STRINGS)
        self._sorted_labels = np.zeros(0, dtype=np.int64)
        self._recent: dict[str, int] = {}
        self._n_alive = 0

    # -- ids ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n_alive

    @property
    def n_dead(self) -> int:
        return self.size - self._n_alive

    def labels_of(self, ids: Sequence[str]) -> np.ndarray:
        """The live label of each id, or -1 where the id is not in the table."""
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        keys = np.asarray(ids, dtype=STRINGS)
        labels = np.full(len(keys), -1, dtype=np.int64)
        if len(self._sorted_ids):
            where = np.searchsorted(self._sorted_ids, keys)
            where = np.minimum(where, len(self._sorted_ids) - 1)
            found = self._sorted_ids[where] == keys
            labels[found] = self._sorted_labels[where[found]]
        if self._recent:
            for row, key in enumerate(ids):
                label = self._recent.get(key)
                if label is not None:
                    labels[row] = label
        # A sorted entry may be stale (its label since removed or reused): check it still holds.
        known = labels >= 0
        if known.any():
            stale = ~self.alive[labels[known]] | (self.ids_by_label[labels[known]] != keys[known])
            labels[np.flatnonzero(known)[stale]] = -1
        return labels

    def ids_of(self, labels: np.ndarray) -> list[str]:
        return self.ids_by_label[labels].tolist()

    def live_labels(self) -> np.ndarray:
        return np.flatnonzero(self.alive[: self.size]).astype(np.int64)

    # -- writing ------------------------------------------------------------------------------
    def insert(self, ids: Sequence[str], attributes: Sequence[Mapping[str, Any]] | None) -> np.ndarray:
        """Give new labels to ``ids`` (none of which may be live) and store their attributes."""
        return self.insert_columns(ids, columns_from_rows(ids, attributes))

    def insert_columns(self, ids: Sequence[str], columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """:meth:`insert` with attributes given column by column (values already normalised)."""
        n = len(ids)
        reused: list[int] = []
        if self.reuse_labels and self.free:
            reused = self.free[-n:][::-1]
            del self.free[len(self.free) - len(reused):]
        fresh = np.arange(self.size, self.size + n - len(reused), dtype=np.int64)
        labels = np.concatenate([np.asarray(reused, dtype=np.int64), fresh])
        self.size += len(fresh)
        self.ids_by_label = grow(self.ids_by_label, self.size, "")
        self.alive = grow(self.alive, self.size, False)
        self.ids_by_label[labels] = np.asarray(ids, dtype=STRINGS)
        self.alive[labels] = True
        self._n_alive += n
        for name, values in columns.items():
            self.columns.setdefault(name, Column()).set(labels, values, self.size)
        for name, column in self.columns.items():
            column.resize(self.size)
            if name not in columns:
                column.clear(labels)  # a reused label must not inherit old values
        if n > 1024:
            self._rebuild_lookup()  # a bulk insert: re-sort once rather than fill the dict
        else:
            for label, item_id in zip(labels.tolist(), ids):
                self._recent[item_id] = label
            if len(self._recent) > max(1024, self._n_alive // 16):
                self._rebuild_lookup()
        return labels

    def release(self, labels: np.ndarray) -> None:
        """Mark live ``labels`` dead (their ids disappear from lookups and searches)."""
        labels = np.unique(labels[labels >= 0])
        labels = labels[self.alive[labels]]
        self.alive[labels] = False
        self._n_alive -= len(labels)
        for column in self.columns.values():
            column.clear(labels)
        for item_id in self.ids_of(labels):
            self._recent.pop(item_id, None)
        if self.reuse_labels:
            self.free.extend(labels.tolist())

    def compact(self) -> np.ndarray:
        """Renumber live rows 0..n-1 in label order; returns the old labels in their new order."""
        keep = self.live_labels()
        attributes = {name: column.get_many(keep) for name, column in self.columns.items()}
        ids = self.ids_of(keep)
        self.__init__(self.reuse_labels)  # type: ignore[misc]
        self.insert_columns(ids, attributes)
        self._rebuild_lookup()
        return keep

    def _rebuild_lookup(self) -> None:
        live = self.live_labels()
        keys = self.ids_by_label[live]
        order = np.argsort(keys, kind="stable")
        self._sorted_ids = keys[order]
        self._sorted_labels = live[order]
        self._recent = {}

    # -- reading ------------------------------------------------------------------------------
    def attributes_of(self, label: int) -> dict[str, Any]:
        values = {name: column.get_many(np.array([label]))[0] for name, column in self.columns.items()}
        return {name: value for name, value in values.items() if value is not None}

    def mask(self, filters: Filters | None) -> np.ndarray:
        """Bool mask over label slots: live and passing ``filters`` (same as ``Filters.matches``)."""
        mask = self.alive[: self.size].copy()
        if filters is None or filters.is_empty():
            return mask
        for name, allowed in filters.equals.items():
            column = self.columns.get(name)
            if column is None:
                return np.zeros(self.size, dtype=bool)
            mask &= column.equals_mask(tuple(str(v) for v in allowed), self.size)
        for name, (low, high) in filters.ranges.items():
            column = self.columns.get(name)
            if column is None:
                return np.zeros(self.size, dtype=bool)
            mask &= column.range_mask(low, high, self.size)
        return mask

    def nbytes(self) -> int:
        return int(self.ids_by_label.nbytes + self.alive.nbytes + self._sorted_ids.nbytes
                   + self._sorted_labels.nbytes + 100 * len(self._recent) + 8 * len(self.free)
                   + sum(column.nbytes() for column in self.columns.values()))

    # -- persistence --------------------------------------------------------------------------
    def to_arrow(self):  # noqa: ANN201 - (pyarrow.Table, labels), pyarrow imported lazily
        """Live rows as an Arrow table: ``label``, ``id`` and one typed column per attribute.

        ``text`` columns are dictionary-encoded strings, ``number`` columns float64 with a
        ``<name>#int`` flag column, ``object`` columns hold each value as JSON text; the kinds go
        in the manifest (:meth:`column_kinds`). Dead labels are simply absent. Built column by
        column from the numpy arrays, without a Python object per row where avoidable.
        """
        import json

        import pyarrow as pa

        keep = self.live_labels()
        arrays: dict[str, Any] = {"label": pa.array(keep, type=pa.int64()),
                                  "id": _arrow_strings(self.ids_by_label[keep])}
        for name, column in self.columns.items():
            if column.kind == "text":
                codes = column.codes[keep]
                arrays[name] = pa.DictionaryArray.from_arrays(
                    pa.array(codes, mask=codes < 0, type=pa.int32()),
                    pa.array(column.categories, type=pa.string()))
            elif column.kind == "number":
                arrays[name] = pa.array(column.values[keep], mask=~column.present[keep],
                                        type=pa.float64())
                arrays[f"{name}#int"] = pa.array(column.is_int[keep], type=pa.bool_())
            elif column.kind == "object":
                arrays[name] = pa.array([None if v is None else json.dumps(v)
                                         for v in column.get_many(keep)], type=pa.string())
            else:
                arrays[name] = pa.nulls(len(keep), type=pa.string())
        return pa.table(arrays), keep

    def column_kinds(self) -> dict[str, str]:
        return {name: column.kind for name, column in self.columns.items()}

    @classmethod
    def from_arrow(cls, table: Any, kinds: Mapping[str, str], size: int,
                   reuse_labels: bool) -> "AttributeTable":
        """Rebuild a table written by :meth:`to_arrow`, with ``size`` label slots."""
        import json

        import pyarrow as pa

        result = cls(reuse_labels)
        labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= size):
            raise LookalikeError(f"stored labels outside 0..{size - 1}")
        result.size = size
        result.ids_by_label = np.zeros(size, dtype=STRINGS)
        result.ids_by_label[labels] = _numpy_strings(table.column("id"))
        result.alive = np.zeros(size, dtype=bool)
        result.alive[labels] = True
        result._n_alive = int(result.alive.sum())
        if result._n_alive != len(labels):
            raise LookalikeError("stored labels repeat")
        for name, kind in kinds.items():
            column = result.columns[name] = Column(kind)
            column.resize(size)
            data = table.column(name).combine_chunks() if kind != "none" else None
            if kind == "text":
                if not pa.types.is_dictionary(data.type):
                    data = data.dictionary_encode()
                column.categories = data.dictionary.to_pylist()
                column._code_of = {value: code for code, value in enumerate(column.categories)}
                column.codes[labels] = data.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            elif kind == "number":
                column.values[labels] = data.fill_null(np.nan).to_numpy(zero_copy_only=False)
                column.present[labels] = data.is_valid().to_numpy(zero_copy_only=False)
                flags = table.column(f"{name}#int").combine_chunks()
                column.is_int[labels] = flags.fill_null(False).to_numpy(zero_copy_only=False)
            elif kind == "object":
                column.objects[labels] = [None if v is None else json.loads(v)
                                          for v in data.to_pylist()]
        if reuse_labels:
            result.free = np.flatnonzero(~result.alive).tolist()
        result._rebuild_lookup()
        return result


_CHUNK = 65_536  # rows converted at a time between numpy strings and Arrow (bounds Python objects)


def _arrow_strings(strings: np.ndarray):  # noqa: ANN202 - pyarrow.ChunkedArray
    import pyarrow as pa

    return pa.chunked_array([pa.array(strings[lo: lo + _CHUNK].tolist(), type=pa.string())
                             for lo in range(0, len(strings), _CHUNK)] or [pa.array([], pa.string())])


def _numpy_strings(chunked: Any) -> np.ndarray:
    out = np.zeros(len(chunked), dtype=STRINGS)
    for lo in range(0, len(chunked), _CHUNK):
        out[lo: lo + _CHUNK] = np.asarray(chunked.slice(lo, _CHUNK).to_pylist(), dtype=STRINGS)
    return out


__all__ = ["AttributeTable", "Column", "columns_from_rows", "normalise_value", "unique_last"]
