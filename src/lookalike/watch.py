"""Watch a folder of images and keep a project's catalogue and index in step with it.

    from lookalike import Project
    from lookalike.watch import FolderWatcher

    FolderWatcher(Project("lookalike-data"), "photos", embedder="pixels",
                  on_batch=lambda batch: print(batch.summary())).run()

* Files added, changed, renamed or removed below the folder are ingested (the same records and
  ids as ``lookalike ingest FOLDER``: this module lists the folder with
  :class:`~lookalike.catalogue.sources.FolderSource`) and the index is brought up to date.
* Debounced: a file is only read once its size and modification time have stayed the same for
  ``settle`` seconds, so a half-copied file waits for the rest.
* Crash-safe: the catalogue and the index are the state. On start the folder is reconciled with
  them (idempotent: unchanged files cost a hash, no decode), so a kill at any moment followed by
  a restart loses nothing and duplicates nothing. Which catalogue items came from the folder is
  kept in ``<project>/watch/<key>.json``, written *before* items are added and *after* they are
  removed, so it never misses an item the folder put in the catalogue.
* Kernel notifications (inotify) through ``watchfiles``; ``poll=True`` polls instead, and the
  watcher switches to polling by itself when notifications are unavailable.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lookalike.catalogue.sources import FolderSource, SourceRecord
from lookalike.catalogue.store import Reject
from lookalike.errors import LookalikeError, StoreError, UnknownNameError
from lookalike.project import DEFAULT_EMBEDDER, DEFAULT_INDEX_NAME, Project
from lookalike.storage import atomic_write_text

#: Folder inside the project where each watched folder's item ids are kept.
WATCH_STATE_DIR = "watch"
#: Seconds a file's size and modification time must stay unchanged before it is read.
DEFAULT_SETTLE = 1.0
#: Seconds between two scans of the folder when polling.
DEFAULT_POLL_INTERVAL = 0.5
_SHOWN_IDS = 5  # ids named per kind in a one-line summary


@dataclass
class WatchBatch:
    """What one pass over the folder did. ``reason``: ``start`` (the reconcile when watching
    begins) or ``change`` (files settled after a change)."""

    reason: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    rejected: list[Reject] = field(default_factory=list)
    index: str | None = None
    index_size: int | None = None
    seconds: float = 0.0
    error: str | None = None

    def summary(self) -> str:
        """One line for people, e.g. ``16:02:11 change: 2 added (a, b), 1 removed (c);
        index 'default' 301 items; 0.4 s``."""
        parts = []
        for kind in ("added", "updated", "removed"):
            ids = getattr(self, kind)
            if ids:
                shown = ", ".join(ids[:_SHOWN_IDS]) + (", ..." if len(ids) > _SHOWN_IDS else "")
                parts.append(f"{len(ids)} {kind} ({shown})")
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected")
        if self.unchanged:
            parts.append(f"{self.unchanged} unchanged")
        text = ", ".join(parts) or "nothing to do"
        if self.index is not None:
            size = "not built yet" if self.index_size is None else f"{self.index_size} items"
            text += f"; index {self.index!r} {size}"
        if self.error:
            text += f"; error: {self.error}"
        return f"{datetime.now():%H:%M:%S} {self.reason}: {text}; {self.seconds:.1f} s"

    def to_json(self) -> dict[str, Any]:
        return {"event": "batch", "reason": self.reason, "added": self.added,
                "updated": self.updated, "removed": self.removed, "unchanged": self.unchanged,
                "rejected": [r.to_json() for r in self.rejected], "index": self.index,
                "index_size": self.index_size, "seconds": round(self.seconds, 3),
                "error": self.error}


class _Ledger:
    """The ids of catalogue items the folder put there: a superset, never missing one."""

    def __init__(self, project_path: Path, folder: Path) -> None:
        key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        self.path = project_path / WATCH_STATE_DIR / f"{key}.json"
        self.folder = folder
        self.ids: set[str] = set()
        if self.path.is_file():
            try:
                self.ids = set(json.loads(self.path.read_text())["ids"])
            except (ValueError, KeyError, TypeError):
                raise StoreError(f"{self.path}: damaged watch state; delete it and restart "
                                 "(items of files removed meanwhile then stay)") from None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"folder": str(self.folder),
                                                 "ids": sorted(self.ids)}))


class _Settler:
    """Paths waiting for their size and modification time to stay unchanged ``settle`` s."""

    def __init__(self, folder: Path, settle: float) -> None:
        self.folder, self.settle = folder, settle
        self.pending: dict[str, tuple[tuple[int, int] | None | str, float]] = {}

    def touch(self, relative: str) -> None:
        """Something happened at ``relative``; a folder stands for every file below it (a
        folder moved in brings no event for its files)."""
        path = self.folder / relative
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if not name.startswith("."):
                        self.touch((Path(root) / name).relative_to(self.folder).as_posix())
            return
        self.pending[relative] = ("unseen", time.monotonic())

    def take_ready(self) -> set[str]:
        """The paths that settled (removed from the waiting list)."""
        now, ready = time.monotonic(), set()
        for relative, (seen, since) in list(self.pending.items()):
            current = _signature(self.folder / relative)
            if current != seen:
                self.pending[relative] = (current, now)
            elif now - since >= self.settle:
                ready.add(relative)
                del self.pending[relative]
        return ready


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # gone (or unreadable): settles like any other state
    return stat.st_size, stat.st_mtime_ns


class FolderWatcher:
    """Keeps ``project``'s catalogue and index ``index`` in step with the files below ``folder``.

    ``embedder`` builds the index when it does not exist yet (default efficientnet-lite0); an
    existing index is refreshed with its own embedder. ``on_batch`` receives every
    :class:`WatchBatch`, ``on_note`` one-line notices (switching to polling, say);
    ``progress`` shows Rich progress bars (on a terminal) during the start-up reconcile.
    """

    def __init__(self, project: Project, folder: str | Path, *, index: str | None = None,
                 embedder: str | None = None, settle: float = DEFAULT_SETTLE,
                 poll: bool = False, poll_interval: float = DEFAULT_POLL_INTERVAL,
                 batch_size: int = 256, on_batch: Callable[[WatchBatch], None] | None = None,
                 on_note: Callable[[str], None] | None = None, progress: bool = False) -> None:
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise LookalikeError(f"{folder}: no such folder to watch")
        if settle < 0 or poll_interval <= 0:
            raise LookalikeError("settle must be >= 0 and poll_interval > 0 seconds")
        self.project = project
        self.index, self.embedder = index, embedder
        self.settle, self.poll, self.poll_interval = settle, poll, poll_interval
        self.batch_size, self.progress = batch_size, progress
        self.on_batch = on_batch or (lambda batch: None)
        self.on_note = on_note or (lambda text: None)
        self._ledger = _Ledger(project.path, self.folder)
        self._settler = _Settler(self.folder, settle)
        self._resync = False

    # ---- one pass ------------------------------------------------------------------------------
    def sync(self, ready: set[str] | None = None) -> WatchBatch:
        """Apply the settled paths ``ready`` (relative, posix) -- or, with None, reconcile the
        whole folder -- to the catalogue and the index. Idempotent."""
        started = time.perf_counter()
        batch = WatchBatch("start" if ready is None else "change")
        progress = self.progress and ready is None  # the start-up reconcile may be long
        with self.project.write_lock():
            listing = FolderSource(self.folder)  # ids exactly as `lookalike ingest FOLDER`
            records = self._candidates(listing, ready)
            removed = sorted(self._ledger.ids - {record.id for record in listing})
            if records:
                self._ingest(records, batch, progress)
            if removed:
                present = self.project.store.content_hashes(removed)  # (rejects never were)
                self.project.store.remove(removed)
                self._ledger.ids.difference_update(removed)
                self._ledger.save()
                batch.removed = [item_id for item_id in removed if item_id in present]
            if ready is None or batch.added or batch.updated or batch.removed:
                self._update_index(batch, progress)
        batch.seconds = time.perf_counter() - started
        return batch

    def _candidates(self, listing: FolderSource, ready: set[str] | None) -> list[SourceRecord]:
        """Records to ingest now: settled paths, and files never seen (or all, on a reconcile)
        unless they are still being written."""
        now, records = time.time(), []
        for record in listing:
            if record.row in self._settler.pending:
                continue  # still settling
            if ready is not None and record.row in ready:
                records.append(record)
            elif ready is None or record.id not in self._ledger.ids:
                signature = _signature(self.folder / record.row)
                if signature is None or now - signature[1] / 1e9 < self.settle:
                    self._settler.touch(record.row)  # written just now: wait for it to settle
                else:
                    records.append(record)
        return records

    def _ingest(self, records: list[SourceRecord], batch: WatchBatch, progress: bool) -> None:
        ids = [record.id for record in records]
        new = set(ids) - self._ledger.ids
        if new:  # recorded before the items exist, so a crash never orphans one
            self._ledger.ids.update(new)
            self._ledger.save()
        store = self.project.store
        before = store.content_hashes(ids)
        report = self.project.ingest(records, progress=progress, batch_size=self.batch_size)
        after = store.content_hashes(ids)
        rejected = {reject.item_id for reject in report.rejected}
        for item_id in ids:
            if item_id in rejected or item_id not in after:
                continue
            if item_id not in before:
                batch.added.append(item_id)
            elif before[item_id] != after[item_id]:
                batch.updated.append(item_id)
            else:
                batch.unchanged += 1
        batch.rejected = list(report.rejected)

    def _update_index(self, batch: WatchBatch, progress: bool) -> None:
        name = self.index or self.project.default_index_name() or DEFAULT_INDEX_NAME
        batch.index = name
        try:
            summary = self.project.refresh_index(name, progress=progress)
        except UnknownNameError:  # no such index yet: build it once there is something in it
            if not len(self.project.store):
                return
            summary = self.project.index(self.embedder or DEFAULT_EMBEDDER, name=name,
                                         progress=progress)
        batch.index_size = summary.size

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Reconcile, then apply changes as they settle until ``stop`` is set (or Ctrl-C)."""
        stop = stop or threading.Event()
        changes = self._changes(stop)
        first = next(changes, None)  # the watcher is armed now: nothing from here on is missed
        if first is None:
            return
        self._note(first)
        self._resync = False  # the start is a full reconcile anyway
        self._pass(None)
        for found in changes:
            self._note(found)
            if self._resync:
                self._resync = False
                self._pass(None)
            ready = self._settler.take_ready()
            if ready:
                self._pass(ready)

    def _pass(self, ready: set[str] | None) -> None:
        try:
            batch = self.sync(ready)
        except LookalikeError as error:  # e.g. two files with one id: say so, keep watching
            batch = WatchBatch("start" if ready is None else "change", error=str(error))
        self.on_batch(batch)

    def _note(self, changes: set[tuple[Any, str]]) -> None:
        for _, path in changes:
            self._settler.touch(Path(path).relative_to(self.folder).as_posix())

    def _changes(self, stop: threading.Event) -> Iterator[set[tuple[Any, str]]]:
        """Sets of (change, absolute path) from watchfiles, and an empty set at least every few
        tenths of a second; switches to polling when notifications fail."""
        import watchfiles

        tick = int(min(500, max(100, self.settle * 250)))
        polling = self.poll
        while not stop.is_set():
            try:
                yield from watchfiles.watch(
                    self.folder, watch_filter=self._wanted, debounce=tick, step=50,
                    rust_timeout=tick, yield_on_timeout=True, stop_event=stop,
                    force_polling=polling, poll_delay_ms=int(self.poll_interval * 1000))
                return
            except (OSError, RuntimeError) as error:
                if not self.folder.is_dir():
                    raise LookalikeError(f"{self.folder}: the watched folder is gone") from None
                if polling:
                    raise LookalikeError(f"{self.folder}: cannot watch it ({error})") from None
                polling, self._resync = True, True  # events may have been lost: reconcile
                self.on_note(f"file notifications unavailable ({str(error).splitlines()[0]}); "
                             f"polling every {self.poll_interval:g} s instead")

    def _wanted(self, change: Any, path: str) -> bool:
        """Skip hidden files and folders and the project's own folder (if it is inside)."""
        candidate = Path(path)
        if candidate == self.project.path or self.project.path in candidate.parents:
            return False
        try:
            parts = candidate.relative_to(self.folder).parts
        except ValueError:
            return False
        return not any(part.startswith(".") for part in parts)


class BackgroundWatcher:
    """A :class:`FolderWatcher` in a daemon thread, with its own writable project (the service
    starts one for ``serve --watch`` and stops it at shutdown)."""

    def __init__(self, project_dir: str | Path, folder: str | Path,
                 on_error: Callable[[BaseException], None] | None = None,
                 **options: Any) -> None:
        self.project_dir, self.folder, self.options = Path(project_dir), Path(folder), options
        self.on_error = on_error or (lambda error: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "BackgroundWatcher":
        watcher = FolderWatcher(Project(self.project_dir, create=False), self.folder,
                                **self.options)  # bad settings fail here, in the caller
        self._thread = threading.Thread(target=self._run, args=(watcher,), daemon=True,
                                        name="lookalike-watch")
        self._thread.start()
        return self

    def _run(self, watcher: FolderWatcher) -> None:
        try:
            watcher.run(self._stop)
        except Exception as error:  # noqa: BLE001 - reported to the owner, never lost silently
            self.on_error(error)
        finally:
            watcher.project.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to stop and wait for the batch in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundWatcher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
