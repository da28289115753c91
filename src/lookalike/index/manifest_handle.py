"""An index's ``index.json`` kept current by the index itself, wherever its folder moves.

A backend whose data lives elsewhere (the ``milvus`` kind) records facts about that data in
``index.json`` — its item count — that change with every write, while the project only rewrites
``index.json`` on a full save (small updates go to the journal). The handle holds an open
descriptor on the folder, so it still reaches the file after the staging folder is renamed into
a version (``lookalike.storage.versioned_folder``); writes are temp file + fsync + rename inside
that folder. A pruned or read-only folder is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

from lookalike.index.base import INDEX_MANIFEST


class ManifestHandle:
    """``index.json`` of a saved index, reachable even after its folder is renamed."""

    def __init__(self, folder: Path) -> None:
        self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)

    def update_count(self, count: int) -> None:
        """Rewrite the manifest's count if it differs (temp file + rename inside the folder)."""
        try:
            with open(INDEX_MANIFEST, encoding="utf-8", opener=self._opener(os.O_RDONLY)) as f:
                manifest = json.load(f)
            if manifest.get("count") == count:
                return
            manifest["count"] = int(count)
            tmp = f".{INDEX_MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "w", encoding="utf-8",
                      opener=self._opener(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)) as f:
                json.dump(manifest, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, INDEX_MANIFEST, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except (OSError, ValueError):
            pass  # the version was pruned or is read-only: nothing to keep current

    def _opener(self, flags: int):  # noqa: ANN202 - an `open` opener
        return lambda path, _: os.open(path, flags, 0o644, dir_fd=self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
