"""A folder of images as a catalogue source, with ids that are unique by construction.

The id of an image file is its path relative to the folder **without** the extension
(``shoes/boot.jpg`` -> ``shoes/boot``), unless that would not be unique; then it keeps the
extension (``odd/photo.gif``, ``odd/photo.tiff``). Other files always keep it
(``shoes/notes.txt``; ingest lists them as rejects). Precisely, for an image file with
relative path ``P`` and stem ``S`` (``P`` without its extension), in this order:

1. the catalogue already holds an item with id ``P`` -> ``P`` (it was named that before);
2. no other file has the stem ``S`` and no file is called exactly ``S`` -> ``S``;
3. the files sharing ``S`` collide: the catalogue holds ``S`` and this is the first of them
   (in sorted order) whose bytes are the ones ``S`` was ingested from -> ``S`` (the existing
   item keeps its file);
4. otherwise ``P``.

So existing items are never renamed: a colliding file added later gets the extension id, the
file that had the plain id keeps it, and a re-run of the same folder gives the same ids. When
both the stored file and a newcomer appear at once with the stored file's bytes changed, no
file matches rule 3: every colliding file gets its extension id and the old ``S`` item stays
as it was (like an item whose file was deleted; ingest never removes items).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

from lookalike.catalogue.images import IMAGE_EXTENSIONS, sha256_hex
from lookalike.catalogue.records import CatalogueSource, SourceRecord

#: ``ids -> {id: sha256 of the bytes it was ingested from}`` for the ids a catalogue holds
#: (:meth:`lookalike.catalogue.store.CatalogueStore.source_hashes`).
StoredHashes = Callable[[Sequence[str]], Mapping[str, str]]


class FolderSource(CatalogueSource):
    """Every (non-hidden) file below ``folder``; the first sub-folder name is the category.

    Ids follow the module docstring; without ``stored`` (a catalogue's
    :meth:`~lookalike.catalogue.store.CatalogueStore.source_hashes`) the folder is treated as
    new to the catalogue. ``collisions`` maps each shared stem to the ids its files got.
    Hidden files and folders, and lookalike project folders inside ``folder``, are skipped.
    Files without an image extension are listed too, so ingest can report them as rejects
    instead of ignoring them silently.
    """

    def __init__(self, folder: str | Path, stored: StoredHashes | None = None) -> None:
        self.folder = Path(folder)
        paths = {path.relative_to(self.folder).as_posix(): path
                 for path in _walk_files(self.folder)}
        ids, self.collisions = folder_ids(
            list(paths), stored, lambda relative: sha256_hex(paths[relative].read_bytes()))
        records = [SourceRecord(id=ids[relative], image=path,
                                category=relative.split("/")[0] if "/" in relative else None,
                                row=relative) for relative, path in paths.items()]
        super().__init__(str(self.folder), records)

    def for_catalogue(self, stored: StoredHashes) -> "FolderSource":
        """The same folder with ids resolved against a catalogue (see the module docstring)."""
        return FolderSource(self.folder, stored)


def folder_ids(relatives: Sequence[str], stored: StoredHashes | None = None,
               file_hash: Callable[[str], str] | None = None
               ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``({relative path: id}, {shared stem: ids of its files})`` by the module's rules.

    ``file_hash(relative)`` gives the sha256 of a file's bytes; it is only called for files
    that collide on a stem the catalogue holds.
    """
    stems = {relative: image_stem(relative) for relative in relatives}
    groups: dict[str, list[str]] = defaultdict(list)
    for relative, stem in stems.items():
        if stem is not None:
            groups[stem].append(relative)
    taken = set(relatives)  # ids that files keep whatever happens (their own paths)
    colliding = {stem: files for stem, files in groups.items() if len(files) > 1 or stem in taken}
    known = dict(stored([*relatives, *colliding])) if stored is not None else {}
    ids: dict[str, str] = {}
    for relative, stem in stems.items():
        if stem is None or relative in known or stem in colliding:
            ids[relative] = relative  # rules 1 and 4 (and files that are not images)
        else:
            ids[relative] = stem  # rule 2
    for stem, files in colliding.items():  # rule 3
        if stem in known and stem not in taken:
            owner = _stored_owner(sorted(f for f in files if f not in known), known[stem],
                                  file_hash)
            if owner is not None:
                ids[owner] = stem
    return ids, {stem: sorted(ids[f] for f in files) for stem, files in colliding.items()}


def image_stem(relative: str) -> str | None:
    """The relative path without its extension for an image file, else None."""
    path = PurePosixPath(relative)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    return path.with_suffix("").as_posix()


def _stored_owner(files: Sequence[str], stored_hash: str,
                  file_hash: Callable[[str], str] | None) -> str | None:
    """The first file whose bytes hash to ``stored_hash`` (unreadable files never match)."""
    if file_hash is None:
        return None
    for relative in files:
        try:
            if file_hash(relative) == stored_hash:
                return relative
        except OSError:
            continue
    return None


def _walk_files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        # Hidden folders and lookalike project folders (their stored images) are not catalogue.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (Path(root) / d / "catalogue.sqlite").exists())
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name
