"""Filters as Milvus boolean expressions, with the semantics of :meth:`Filters.matches`.

Where each attribute lives in a collection (see :mod:`lookalike.index.milvus_schema`):

* the text columns ``category``, ``gender``, ``colour``, ``title`` and ``image`` are VARCHAR
  fields holding ``str(value)``; a missing value is the sentinel :data:`MISSING_TEXT` (one NUL
  character), which no filter value can equal (values equal to it are dropped from filters and
  refused by ``add``);
* ``price`` is a DOUBLE field; a missing price is NaN, and every comparison with NaN is false in
  Milvus as in numpy, so a missing price never passes a range;
* every attribute is also in the JSON field ``attrs``: ``attrs["s"][name]`` holds ``str(value)``
  (for equality on any other column) and ``attrs["n"][name]`` holds ``float(value)`` when that is a
  finite number (for ranges on any other column). A missing JSON key compares false.

So ``equals`` become ``field in [...]`` and ``ranges`` inclusive ``>=`` / ``<=`` comparisons,
joined with ``and``; a missing attribute never matches.

**Escaping.** Every value and JSON key is written as a double-quoted literal by
:func:`quote` (``json.dumps`` without ASCII escaping: backslash, double quote and control
characters escaped, everything else literal UTF-8), which the Milvus expression parser reads back
as the same string. A value such as ``x" or id != "`` is therefore one string to compare with,
never expression syntax (tested in tests/test_milvus.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from lookalike.index.base import Filters

#: VARCHAR filter and display fields; a missing value is stored as MISSING_TEXT.
TEXT_FIELDS = ("category", "gender", "colour", "title", "image")
#: DOUBLE fields; a missing value is stored as NaN.
NUMBER_FIELDS = ("price",)
MISSING_TEXT = "\x00"
ATTRS_FIELD = "attrs"
ID_FIELD = "id"
_MATCH_NOTHING = None


def quote(text: str) -> str:
    """``text`` as a Milvus string literal that reads back as exactly ``text``."""
    return json.dumps(str(text), ensure_ascii=False)


def _number(value: float) -> str:
    return repr(float(value))


def _in_list(target: str, values: Iterable[str]) -> str:
    return f"{target} in [{', '.join(quote(v) for v in values)}]"


def _range(target: str, low: float | None, high: float | None) -> str:
    parts = []
    if low is not None:
        parts.append(f"{target} >= {_number(low)}")
    if high is not None:
        parts.append(f"{target} <= {_number(high)}")
    if not parts:  # any number passes, a missing one does not
        parts.append(f"{target} == {target}" if target in NUMBER_FIELDS
                     else f"{target} >= {_number(-1.7976931348623157e308)}")
    return " and ".join(parts)


def expression(filters: Filters | None) -> str | None:
    """The Milvus expression for ``filters``: ``""`` when they keep everything, ``None`` when
    nothing can pass (an empty set of allowed values, or a NaN bound)."""
    if filters is None or filters.is_empty():
        return ""
    clauses: list[str] = []
    for column, allowed in sorted(filters.equals.items()):
        values = sorted({str(v) for v in allowed} - {MISSING_TEXT})
        if not values:
            return _MATCH_NOTHING
        target = column if column in TEXT_FIELDS else f'{ATTRS_FIELD}["s"][{quote(column)}]'
        clauses.append(_in_list(target, values))
    for column, (low, high) in sorted(filters.ranges.items()):
        if any(b is not None and math.isnan(float(b)) for b in (low, high)):
            return _MATCH_NOTHING
        target = column if column in NUMBER_FIELDS else f'{ATTRS_FIELD}["n"][{quote(column)}]'
        clauses.append(_range(target, low, high))
    return " and ".join(f"({c})" for c in clauses)


def ids_in(ids: Iterable[str], negate: bool = False) -> str:
    """``id in [...]`` (or ``not in``) over escaped ids."""
    return f"{ID_FIELD} {'not in' if negate else 'in'} [{', '.join(quote(i) for i in ids)}]"


def both(first: str, second: str) -> str:
    """Two expressions joined with ``and`` (either may be empty)."""
    return " and ".join(f"({e})" for e in (first, second) if e)
