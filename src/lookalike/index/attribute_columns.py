"""Attribute columns of the FAISS backends' id table (:mod:`lookalike.index.attributes`).

A :class:`Column` holds one attribute over labels, in one of three kinds with the semantics of
:meth:`~lookalike.index.base.Filters.matches`: ``text`` (str values: int32 codes into a category
list), ``number`` (int/float values: float64 plus a flag saying which rows were ints, because
``str(3) != str(3.0)``) and ``object`` (anything mixed, e.g. str and bool in one column: a Python
object array, filtered by a loop). :func:`columns_from_rows` and :func:`unique_last` check and
shape what callers hand in before anything is stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError

STRINGS = np.dtypes.StringDType()
_MAX_EXACT_INT = 2**53  # larger ints do not survive a trip through float64


def grow(array: np.ndarray, needed: int, fill: Any) -> np.ndarray:
    """Return ``array`` with room for ``needed`` rows (capacity doubles, so appends are cheap)."""
    if needed <= len(array):
        return array
    capacity = max(needed, 2 * len(array), 64)
    grown = np.full(capacity, fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def normalise_value(value: Any, column: str, item_id: str) -> Any:
    """An attribute value as a plain Python scalar; numpy scalars become their Python twin."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise LookalikeError(
        f"attribute {column!r} of item {item_id!r} has unsupported type {type(value).__name__}; "
        "use str, int, float, bool or None")


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "object"  # str(True) is "True" but float(True) is 1.0: keep the exact value
    if isinstance(value, int):
        return "number" if abs(value) < _MAX_EXACT_INT else "object"
    if isinstance(value, float):
        return "number"
    return "none"


def _object_equals(value: Any, allowed: tuple[str, ...]) -> bool:
    return value is not None and str(value) in allowed


def _object_in_range(value: Any, low: float | None, high: float | None) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return not (math.isnan(number) or (low is not None and number < low)
                or (high is not None and number > high))


class Column:
    """One attribute column over labels; missing values are None and never match a filter."""

    def __init__(self, kind: str = "none") -> None:
        self.kind = kind  # "none" until the first non-None value fixes it
        self.codes = np.zeros(0, dtype=np.int32)  # text: index into categories, -1 = missing
        self.categories: list[str] = []
        self._code_of: dict[str, int] = {}
        self.values = np.zeros(0, dtype=np.float64)  # number
        self.present = np.zeros(0, dtype=bool)  # number: False = missing
        self.is_int = np.zeros(0, dtype=bool)  # number: the value was an int
        self.objects = np.zeros(0, dtype=object)  # object

    # -- writing ------------------------------------------------------------------------------
    def set(self, labels: np.ndarray, values: Sequence[Any], size: int) -> None:
        """Write ``values`` (already normalised) at ``labels``; the table has ``size`` slots."""
        kinds = {_kind_of(v) for v in values} - {"none"}
        if self.kind == "none" and kinds:
            self._become(kinds.pop() if len(kinds) == 1 else "object", size)
        elif kinds - {self.kind} and self.kind != "object":
            self._become("object", size)
        self.resize(size)
        if self.kind == "text":
            codes = np.fromiter((self._code(v) for v in values), dtype=np.int32, count=len(values))
            self.codes[labels] = codes
        elif self.kind == "number":
            self.present[labels] = [v is not None for v in values]
            self.is_int[labels] = [isinstance(v, int) for v in values]
            self.values[labels] = [np.nan if v is None else float(v) for v in values]
        elif self.kind == "object":
            column = np.empty(len(values), dtype=object)
            column[:] = list(values)
            self.objects[labels] = column

    def clear(self, labels: np.ndarray) -> None:
        """Forget the values at ``labels`` (they become missing)."""
        if self.kind == "text":
            self.codes[labels] = -1
        elif self.kind == "number":
            self.present[labels] = False
        elif self.kind == "object":
            self.objects[labels] = None

    def resize(self, size: int) -> None:
        if self.kind == "text":
            self.codes = grow(self.codes, size, -1)
        elif self.kind == "number":
            self.values = grow(self.values, size, np.nan)
            self.present = grow(self.present, size, False)
            self.is_int = grow(self.is_int, size, False)
        elif self.kind == "object":
            self.objects = grow(self.objects, size, None)

    def _code(self, value: str | None) -> int:
        if value is None:
            return -1
        code = self._code_of.get(value)
        if code is None:
            code = self._code_of[value] = len(self.categories)
            self.categories.append(value)
        return code

    def _become(self, kind: str, size: int) -> None:
        """Switch to ``kind``, converting what is stored (only ever towards ``object``)."""
        if self.kind != "none":
            self.resize(size)
            old = self.get_many(np.arange(size))
            self.__init__(kind)  # type: ignore[misc]
            self.kind = kind
            self.resize(size)
            self.set(np.arange(size), old, size)
        else:
            self.kind = kind

    # -- reading ------------------------------------------------------------------------------
    def get_many(self, labels: np.ndarray) -> list[Any]:
        if self.kind == "text":
            codes = self.codes[labels] if len(self.codes) else np.full(len(labels), -1)
            return [None if c < 0 else self.categories[c] for c in codes]
        if self.kind == "number":
            out: list[Any] = []
            for label in labels:
                if label >= len(self.present) or not self.present[label]:
                    out.append(None)
                elif self.is_int[label]:
                    out.append(int(self.values[label]))
                else:
                    out.append(float(self.values[label]))
            return out
        if self.kind == "object":
            return [self.objects[label] if label < len(self.objects) else None for label in labels]
        return [None] * len(labels)

    def equals_mask(self, allowed: tuple[str, ...], size: int) -> np.ndarray:
        """Rows whose ``str(value)`` is one of ``allowed``."""
        if self.kind == "text":
            wanted = [self._code_of[v] for v in allowed if v in self._code_of]
            return np.isin(self.codes[:size], np.asarray(wanted, dtype=np.int32))
        if self.kind == "number":
            mask = np.zeros(size, dtype=bool)
            values, present, is_int = self.values[:size], self.present[:size], self.is_int[:size]
            for text in allowed:
                try:
                    number = float(text)
                except ValueError:
                    continue
                # str(v) == text  <=>  v == float(text) and text is how str() spells that value
                int_spelling = (not math.isinf(number) and not math.isnan(number)
                                and number.is_integer() and abs(number) < _MAX_EXACT_INT
                                and str(int(number)) == text)
                float_spelling = repr(number) == text
                same = np.isnan(values) if math.isnan(number) else values == number
                mask |= present & same & np.where(is_int, int_spelling, float_spelling)
            return mask
        if self.kind == "object":
            return np.fromiter((_object_equals(v, allowed) for v in self.objects[:size]),
                               dtype=bool, count=size)
        return np.zeros(size, dtype=bool)

    def range_mask(self, low: float | None, high: float | None, size: int) -> np.ndarray:
        """Rows whose ``float(value)`` is a number within ``[low, high]``."""
        if self.kind == "number":
            numbers = np.where(self.present[:size], self.values[:size], np.nan)
        elif self.kind == "text":
            per_category = np.array([_as_float(c) for c in self.categories] + [np.nan])
            numbers = per_category[self.codes[:size]]  # code -1 picks the trailing NaN
        elif self.kind == "object":
            return np.fromiter((_object_in_range(v, low, high) for v in self.objects[:size]),
                               dtype=bool, count=size)
        else:
            return np.zeros(size, dtype=bool)
        mask = ~np.isnan(numbers)
        if low is not None:
            mask &= numbers >= low
        if high is not None:
            mask &= numbers <= high
        return mask

    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.values.nbytes + self.present.nbytes
                   + self.is_int.nbytes + self.objects.nbytes
                   + sum(49 + len(c) for c in self.categories))


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def check_mapping(row: Any, item_id: str) -> Mapping[str, Any]:
    """``row`` if it is a mapping of attributes, else a one-line error naming the item."""
    if not isinstance(row, Mapping):
        raise LookalikeError(f"attributes of item {item_id!r} must be a mapping")
    return row


def normalised_row(row: Any, item_id: str) -> dict[str, Any]:
    """One item's attributes with every value normalised (for backends that store rows)."""
    return {str(k): normalise_value(v, str(k), item_id)
            for k, v in check_mapping(row, item_id).items()}


def columns_from_rows(ids: Sequence[str],
                      rows: Sequence[Mapping[str, Any]] | None) -> dict[str, list[Any]]:
    """Per-item attribute dicts as normalised columns; raises before anything is stored."""
    if rows is None:
        return {}
    if len(rows) != len(ids):
        raise LookalikeError(f"{len(ids)} ids but {len(rows)} attribute rows")
    for row, item_id in zip(rows, ids):
        check_mapping(row, item_id)
    names = sorted({name for row in rows for name in row}, key=str)
    columns: dict[str, list[Any]] = {}
    for name in names:
        if not isinstance(name, str):
            raise LookalikeError(f"attribute names must be strings, got {name!r}")
        columns[name] = [normalise_value(row.get(name), name, item_id)
                         for row, item_id in zip(rows, ids)]
    return columns


def unique_last(ids: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """Distinct ids keeping each one's last occurrence, and those occurrences' row numbers."""
    last: dict[str, int] = {}
    for row, item_id in enumerate(ids):
        if not isinstance(item_id, str) or not item_id:
            raise LookalikeError(f"item ids must be non-empty strings, got {item_id!r} at row {row}")
        last[item_id] = row
    return list(last), np.fromiter(last.values(), dtype=np.int64, count=len(last))


__all__ = ["STRINGS", "Column", "grow", "normalise_value", "columns_from_rows", "unique_last"]
