"""Atomic file and folder writes.

A crash mid-write must leave the last good state: files are written to a temporary sibling and
renamed over the target (``os.replace`` is atomic on POSIX); folders are written as a new version
and a small pointer file is swapped to it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CURRENT_POINTER = "CURRENT"


@functools.cache
def _umask() -> int:
    """The process umask, read once (from /proc where possible: setting it to read it is racy)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace ``path`` only when the block ends without an
    error (temporary file, fsync, rename): readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the file the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never half."""
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def versioned_folder(root: str | Path, keep: int = 1) -> Iterator[Path]:
    """Write a new version of a folder-shaped artefact (an index, say) atomically.

    Yields an empty staging folder inside ``root``; when the block ends without error the staging
    folder becomes ``root/v<N>`` and ``root/CURRENT`` is atomically pointed at it. Older versions
    beyond ``keep`` are removed afterwards. If the block raises, nothing visible changes.
    Readers use :func:`current_version`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; other readers (workers) need in
    try:
        yield staging
        number = _next_version(root)
        final = root / f"v{number:06d}"
        os.replace(staging, final)
        _fsync_dir(root)
        atomic_write_text(root / CURRENT_POINTER, final.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(root, keep)


def current_version(root: str | Path) -> Path | None:
    """The folder ``CURRENT`` points at, or None when nothing was saved yet."""
    root = Path(root)
    pointer = root / CURRENT_POINTER
    if not pointer.is_file():
        return None
    target = root / pointer.read_text().strip()
    return target if target.is_dir() else None


def _next_version(root: Path) -> int:
    numbers = [int(p.name[1:]) for p in root.glob("v[0-9]*") if p.name[1:].isdigit()]
    return max(numbers, default=0) + 1


def _prune(root: Path, keep: int) -> None:
    current = current_version(root)
    versions = sorted(p for p in root.glob("v[0-9]*") if p.is_dir())
    for old in versions[: max(0, len(versions) - keep)]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".staging-*"):  # left by a crash in an earlier run
        shutil.rmtree(stale, ignore_errors=True)
