"""Shopper event logs: ingest them into the project, replay them as a time-split evaluation.

A log is a CSV or Parquet file with one row per event: ``shopper``, ``item``, ``timestamp`` and an
optional ``event`` (view, cart, purchase, ...). Timestamps may be ISO 8601 strings or Unix
seconds. Events are kept in the project's own SQLite file ``events.sqlite``; one ingest is one
transaction, so a crash or a bad row leaves the table exactly as it was, and ingesting the same
file twice adds nothing (a repeated ``(shopper, item, timestamp, event)`` is ignored). Rows whose
item is not in the catalogue are not stored and are counted in the report.

:func:`evaluate_recs` replays the log: for each shopper the last ``holdout`` events are hidden,
the earlier ones are the history given to :func:`lookalike.recommend.personal.recommend`, and a
hit is a hidden item in the top ``k``. It reports HR@k, NDCG@k (binary gains over the distinct
hidden items) and catalogue coverage (the share of indexed items recommended to anyone).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lookalike.errors import CatalogueError, LookalikeError
from lookalike.layout import EVENTS_FILE  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import pandas as pd

#: A :class:`lookalike.project.Project` (not imported: project.py calls this module, so the
#: dependency points one way).
Project = Any

REQUIRED_COLUMNS = ("shopper", "item", "timestamp")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    shopper   TEXT NOT NULL,
    item      TEXT NOT NULL,
    timestamp REAL NOT NULL,          -- Unix seconds (UTC)
    event     TEXT NOT NULL DEFAULT '',
    UNIQUE (shopper, item, timestamp, event)
);
CREATE INDEX IF NOT EXISTS events_shopper ON events(shopper, timestamp);
"""


class EventLogError(LookalikeError):
    """An event log is malformed: missing columns, unreadable timestamps, unknown format."""


@dataclass
class EventIngestReport:
    """What :func:`ingest_events` did."""

    source: str
    rows: int
    added: int
    duplicates: int
    unknown_items: int
    unknown_examples: list[str] = field(default_factory=list)
    shoppers: int = 0
    total_events: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- storage ------------------------------------------------------------------------------------
def events_path(project: "Project") -> Path:
    return project.layout.events


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), timeout=30)
    connection.executescript(_SCHEMA)
    return connection


def read_event_file(path: str | Path) -> "pd.DataFrame":
    """A log file as a frame with ``shopper``, ``item`` (strings), ``timestamp`` (Unix seconds,
    float) and ``event`` (string, '' when absent)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise EventLogError(f"{path}: no such event log")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype={"shopper": str, "item": str, "event": str})
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise EventLogError(f"{path}: unknown event log format {suffix!r}; use .csv or .parquet")
    except EventLogError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many kinds for a broken file
        raise EventLogError(f"{path}: cannot read the event log: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise EventLogError(f"{path}: missing column(s) {', '.join(missing)}; an event log needs "
                            f"{', '.join(REQUIRED_COLUMNS)} (and optionally event)")
    out = pd.DataFrame({"shopper": frame["shopper"], "item": frame["item"]})
    for column in ("shopper", "item"):
        blank = out[column].isna() | (out[column].astype(str).str.strip() == "")
        if blank.any():
            row = int(np.flatnonzero(blank.to_numpy())[0])
            raise EventLogError(f"{path}: row {row + 1} has an empty {column}")
        out[column] = out[column].astype(str).str.strip()
    out["timestamp"] = _unix_seconds(frame["timestamp"], path)
    out["event"] = (frame["event"].fillna("").astype(str).str.strip()
                    if "event" in frame.columns else "")
    return out


def _unix_seconds(values: "pd.Series", path: Path) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values):
        seconds = values.to_numpy(dtype=np.float64)
    else:
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise EventLogError(f"{path}: row {row + 1}: unreadable timestamp "
                                f"{values.iloc[row]!r} (use ISO 8601 or Unix seconds)")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    bad = ~np.isfinite(seconds)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise EventLogError(f"{path}: row {row + 1}: missing or invalid timestamp")
    return seconds


def ingest_events(project: "Project", path: str | Path) -> EventIngestReport:
    """Add the events of a CSV/Parquet log to the project (one atomic transaction).

    Rows naming items the catalogue does not hold are skipped and counted; re-ingesting the same
    rows adds nothing.
    """
    project.require_writable("ingest events")
    frame = read_event_file(path)
    known = set(project.store.ids())
    is_known = frame["item"].isin(known).to_numpy()
    unknown = frame.loc[~is_known, "item"]
    rows = frame[is_known]
    connection = _connect(events_path(project))
    try:
        before = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        with connection:  # one transaction: all rows or none
            connection.executemany(
                "INSERT OR IGNORE INTO events (shopper, item, timestamp, event) VALUES (?,?,?,?)",
                zip(rows["shopper"], rows["item"], rows["timestamp"].astype(float),
                    rows["event"]))
        total = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        shoppers = connection.execute("SELECT COUNT(DISTINCT shopper) FROM events").fetchone()[0]
    finally:
        connection.close()
    added = total - before
    return EventIngestReport(source=str(path), rows=len(frame), added=added,
                             duplicates=len(rows) - added, unknown_items=len(unknown),
                             unknown_examples=sorted(set(unknown))[:5], shoppers=shoppers,
                             total_events=total)


def load_events(project: "Project", event_types: Sequence[str] | None = None) -> "pd.DataFrame":
    """Every stored event (optionally only some event types), ordered by shopper and time."""
    import pandas as pd

    path = events_path(project)
    if not path.is_file():
        raise CatalogueError(f"{project.path}: no events yet; run `lookalike ingest-events LOG`")
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        frame = pd.read_sql_query("SELECT shopper, item, timestamp, event FROM events "
                                  "ORDER BY shopper, timestamp, rowid", connection)
    finally:
        connection.close()
    if event_types:
        frame = frame[frame["event"].isin(list(event_types))]
    return frame.reset_index(drop=True)


def shopper_history(project: "Project", shopper: str, limit: int | None = None) -> list[str]:
    """A shopper's items, oldest first (the last ``limit`` when given)."""
    frame = load_events(project)
    items = frame.loc[frame["shopper"] == str(shopper), "item"].tolist()
    if not items:
        raise LookalikeError(f"shopper {shopper!r} has no events in {project.path}")
    return items[-limit:] if limit else items


# ---- time-split evaluation ----------------------------------------------------------------------
@dataclass
class ShopperSplit:
    """One shopper's history (older events) and held-out items (the last events)."""

    shopper: str
    history: list[str]
    held_out: list[str]


def time_split(events: "pd.DataFrame", holdout: int = 1, min_history: int = 1) -> tuple[
        list[ShopperSplit], dict[str, int]]:
    """Hide each shopper's last ``holdout`` events; the earlier ones are the history.

    Held-out items the shopper had already seen are dropped (a recommender never re-offers seen
    items); shoppers left with fewer than ``min_history`` distinct history items or no held-out
    item are skipped and counted in the returned ``skipped`` dict.
    """
    if holdout < 1 or min_history < 1:
        raise LookalikeError("holdout and min_history must be at least 1")
    splits: list[ShopperSplit] = []
    skipped = {"short_history": 0, "nothing_new_held_out": 0}
    ordered = events.sort_values(["shopper", "timestamp"], kind="stable")
    for shopper, group in ordered.groupby("shopper", sort=True):
        items = group["item"].tolist()
        history = list(dict.fromkeys(items[:-holdout])) if len(items) > holdout else []
        if len(history) < min_history:
            skipped["short_history"] += 1
            continue
        seen = set(history)
        held_out = [i for i in dict.fromkeys(items[-holdout:]) if i not in seen]
        if not held_out:
            skipped["nothing_new_held_out"] += 1
            continue
        splits.append(ShopperSplit(str(shopper), history, held_out))
    return splits, skipped


@dataclass
class RecsReport:
    """The result of :func:`evaluate_recs`."""

    method: str
    k: int
    metrics: dict[str, float]
    n_shoppers: int
    skipped: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_recs(project: "Project", method: str = "centroid", *, k: int = 10,
                  holdout: int = 1, min_history: int = 1, max_shoppers: int | None = None,
                  event_types: Sequence[str] | None = None, index: str | None = None,
                  diversity: float = 0.0, seed: int = 0, **options: Any) -> RecsReport:
    """Replay the event log: HR@k, NDCG@k and coverage of ``method`` on a time-based split."""
    from lookalike.evaluate.metrics import hit_rate_at_k, mean, ndcg_at_k
    from lookalike.recommend.personal import recommend

    splits, skipped = time_split(load_events(project, event_types), holdout, min_history)
    indexed = set(project.searcher(index).hashes)
    usable = []
    for split in splits:
        split.history = [i for i in split.history if i in indexed]
        split.held_out = [i for i in split.held_out if i in indexed]
        if split.history and split.held_out:
            usable.append(split)
        else:
            skipped["not_indexed"] = skipped.get("not_indexed", 0) + 1
    if max_shoppers is not None and len(usable) > max_shoppers:
        rng = np.random.default_rng(seed)
        usable = [usable[i] for i in sorted(rng.choice(len(usable), max_shoppers, replace=False))]
    if not usable:
        raise LookalikeError("no shopper has both a history and a new held-out item; "
                             "ingest more events or lower --holdout/--min-history")
    relevant = np.zeros((len(usable), k), dtype=bool)
    n_relevant = np.zeros(len(usable), dtype=np.int64)
    recommended: set[str] = set()
    for row, split in enumerate(usable):
        results = recommend(project, split.history, k=k, method=method, index=index,
                            diversity=diversity, seed=seed, **options)
        ids = [r.id for r in results]
        recommended.update(ids)
        truth = set(split.held_out)
        relevant[row, :len(ids)] = [i in truth for i in ids]
        n_relevant[row] = len(truth)
    metrics = {f"HR@{k}": mean(hit_rate_at_k(relevant, k)),
               f"NDCG@{k}": mean(ndcg_at_k(relevant, n_relevant, k)),
               "coverage": len(recommended) / max(1, len(indexed))}
    return RecsReport(method=method, k=k, metrics=metrics, n_shoppers=len(usable),
                      skipped=skipped, settings={"holdout": holdout, "min_history": min_history,
                                                 "diversity": diversity, "seed": seed,
                                                 "event_types": list(event_types or [])})
