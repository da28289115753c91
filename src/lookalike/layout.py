"""The one place that knows how a project folder is laid out.

Every other module asks :class:`ProjectLayout` (or reads the names below) for a path inside a
project instead of spelling it out, so the layout documented in docs/architecture.md is written
down exactly once. Imports nothing of lookalike: any room may use it.

::

    lookalike.json            format version, indexes and the default index
    catalogue.sqlite          items and rejects;  images/ab/<sha256>.<ext>  the image store
    embeddings/<embedder_id>/ the saved embedder (model/) and the cached vectors
    indexes/<name>/CURRENT    -> v000123/ {index/, embedder/, content_hashes.json, journal/}
    text/<index>/             the words (fused image + text) index of an image index
    clusters/<index>/         saved K-means clusters
    duplicates/phash/         fingerprints of the catalogue's photos
    models/<name>/            models trained with `lookalike train`
    probes/<index>-<column>/  category-first search's linear probes
    box-regressor/            shop-the-look's box regressor (`lookalike train-boxes`)
    events.sqlite             shopper event logs
    reports/                  evaluation JSON, picture grids, duplicate groups, the demo page
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_FILE = "lookalike.json"
CATALOGUE_FILE = "catalogue.sqlite"
IMAGES_DIR = "images"
EMBEDDINGS_DIR = "embeddings"
INDEXES_DIR = "indexes"
TEXT_DIR = "text"
CLUSTERS_DIR = "clusters"
PHASH_DIR = Path("duplicates") / "phash"
MODELS_DIR = "models"
PROBES_DIR = "probes"
BOX_REGRESSOR_DIR = "box-regressor"
EVENTS_FILE = "events.sqlite"
REPORTS_DIR = "reports"
WRITE_LOCK_FILE = ".write.lock"
#: Inside every index version: the saved embedder, and which image (content hash) each id was
#: embedded from, so a later `index` run knows what changed without re-embedding everything.
INDEX_EMBEDDER_DIR = "embedder"
INDEX_HASHES_FILE = "content_hashes.json"


@dataclass(frozen=True)
class ProjectLayout:
    """The paths of one project folder (nothing is created or checked here)."""

    root: Path

    @property
    def settings_file(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def write_lock_file(self) -> Path:
        return self.root / WRITE_LOCK_FILE

    @property
    def images(self) -> Path:
        return self.root / IMAGES_DIR

    def embeddings(self, embedder_id: str) -> Path:
        """The cache folder of one embedder's vectors (``model/`` holds the embedder)."""
        return self.root / EMBEDDINGS_DIR / embedder_id

    def index(self, name: str) -> Path:
        """The versioned folder of image index ``name`` (``CURRENT`` -> ``v000123/``)."""
        return self.root / INDEXES_DIR / name

    def text_index(self, name: str) -> Path:
        """The versioned folder of the words index built over image index ``name``."""
        return self.root / TEXT_DIR / name

    def clusters(self, name: str) -> Path:
        return self.root / CLUSTERS_DIR / name

    @property
    def phashes(self) -> Path:
        return self.root / PHASH_DIR

    def model(self, name: str) -> Path:
        return self.root / MODELS_DIR / name

    def probe(self, name: str) -> Path:
        """Category-first search's linear probe ``<index>-<column>`` (a versioned folder)."""
        return self.root / PROBES_DIR / name

    @property
    def box_regressor(self) -> Path:
        return self.root / BOX_REGRESSOR_DIR

    @property
    def events(self) -> Path:
        return self.root / EVENTS_FILE

    def report(self, name: str) -> Path:
        """``reports/<name>``: ``eval-<index>``, ``duplicates-<method>``, ``demo.html``."""
        return self.root / REPORTS_DIR / name

    def evaluation(self, index: str) -> Path:
        return self.report(f"eval-{index}")

    def duplicates(self, method: str) -> Path:
        return self.report(f"duplicates-{method.replace('+', '-')}")


__all__ = ["ProjectLayout", "PROJECT_FILE", "CATALOGUE_FILE", "IMAGES_DIR", "EMBEDDINGS_DIR",
           "INDEXES_DIR", "TEXT_DIR", "CLUSTERS_DIR", "PHASH_DIR", "MODELS_DIR", "PROBES_DIR",
           "BOX_REGRESSOR_DIR", "EVENTS_FILE", "REPORTS_DIR", "INDEX_EMBEDDER_DIR",
           "INDEX_HASHES_FILE"]
