"""The photos int8 EfficientNet-Lite is calibrated and self-checked on: train photos of the
bundled demo catalogue, evenly spaced by id, the same on every machine (never a test photo).

Part of :mod:`lookalike.models.efficientnet` (which re-exports these names).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from lookalike.models import int8

CALIBRATION_IMAGES = 200


def _demo_train_jpegs() -> list[bytes]:
    import pyarrow.parquet as pq

    from lookalike.catalogue.sources import demo_parquet

    table = pq.read_table(demo_parquet(), columns=["id", "split", "image_jpeg"]).to_pandas()
    return list(table[table["split"] == "train"].sort_values("id")["image_jpeg"])


def _calibration_jpegs(count: int = CALIBRATION_IMAGES) -> tuple[bytes, ...]:
    train = _demo_train_jpegs()
    picks = np.linspace(0, len(train) - 1, min(count, len(train))).astype(int)
    return tuple(train[i] for i in picks)


def check_images(count: int = int8.CHECK_IMAGES) -> list[Image.Image]:
    """Photos for the int8 self-check: train photos of the bundled catalogue that calibration
    does not use (half-way between the calibration picks)."""
    train = _demo_train_jpegs()
    used = set(np.linspace(0, len(train) - 1, min(CALIBRATION_IMAGES, len(train))).astype(int))
    free = [i for i in range(len(train)) if i not in used]
    picks = [free[i] for i in np.linspace(0, len(free) - 1, min(count, len(free))).astype(int)]
    return [Image.open(io.BytesIO(train[i])).convert("RGB") for i in picks]


def calibration_images(count: int = CALIBRATION_IMAGES) -> tuple[list[Image.Image], str]:
    """``count`` real catalogue photos for int8 calibration, and a digest of their bytes.

    Taken from the bundled demo catalogue (train rows only, evenly spaced by id), so calibration
    is the same on every machine and never sees a test image.
    """
    blobs = _calibration_jpegs(count)
    digest = hashlib.sha256(b"".join(hashlib.sha256(blob).digest() for blob in blobs))
    images = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in blobs]
    return images, digest.hexdigest()[:16]


def calibration_digest(count: int = CALIBRATION_IMAGES) -> str:
    """Digest of the calibration photos (part of an int8 embedder's id)."""
    blobs = _calibration_jpegs(count)
    joined = b"".join(hashlib.sha256(blob).digest() for blob in blobs)
    return hashlib.sha256(joined).hexdigest()[:16]
