"""Image -> array preparation shared by the embedders.

Every embedder receives PIL images of any size and needs fixed-size pixel arrays. The helpers
here do that with Pillow's C resizers (one call per image) and fill one preallocated uint8 batch,
so no embedder loops over pixels in Python.

Resize policies for a non-square photo going into a square model input:

``stretch``  resize both sides to the target, distorting the aspect ratio. The default for the
             CNN embedder: the best P@10 on the products (60x80 photos; see docs/embedders.md).
``pad``      scale the longest side to the target and centre it on a white square (nothing is
             cut or distorted; catalogue photos are shot on white, so the padding looks like
             more background).
``crop``     scale the shortest side to the target and cut the centre square.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError

RESIZE_POLICIES = ("stretch", "pad", "crop")
WHITE = (255, 255, 255)
_RESAMPLE = Image.Resampling.BILINEAR


def whole_number(name: str, value: object) -> int:
    """``value`` as an int, or a one-line error naming the option (CLI values arrive as text)."""
    try:
        number = int(value)  # type: ignore[call-overload]
        exact = number == float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        exact = False
    if not exact:
        raise LookalikeError(f"{name} must be a whole number, not {value!r}")
    return number


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is a known resize policy, else raise a one-line error."""
    if policy not in RESIZE_POLICIES:
        raise LookalikeError(f"unknown resize policy {policy!r}; use one of "
                             f"{', '.join(RESIZE_POLICIES)}")
    return policy


def as_rgb(image: Image.Image) -> Image.Image:
    """The image in 8-bit RGB (a no-op for the RGB images the catalogue decoder produces)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    # Big photos are first shrunk by an integer factor (a fast box filter), as thumbnail() does.
    gap = 2.0 if image.width > 2 * width and image.height > 2 * height else None
    return image.resize((width, height), _RESAMPLE, reducing_gap=gap)


def fit_square(image: Image.Image, size: int, policy: str = "stretch") -> Image.Image:
    """``image`` as a ``size`` x ``size`` RGB image, following one of :data:`RESIZE_POLICIES`."""
    check_policy(policy)
    image = as_rgb(image)
    width, height = image.size
    if policy == "stretch" or width == height:
        return _resize(image, size, size)
    if policy == "pad":
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = Image.new("RGB", (size, size), WHITE)
        canvas.paste(_resize(image, new_w, new_h), ((size - new_w) // 2, (size - new_h) // 2))
        return canvas
    # crop
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return _resize(image, new_w, new_h).crop((left, top, left + size, top + size))


def images_to_batch(images: Sequence[Image.Image], size: int,
                    policy: str = "stretch") -> np.ndarray:
    """A ``[n, size, size, 3]`` uint8 NHWC batch (channels last, as Pillow lays pixels out)."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for row, image in enumerate(images):
        batch[row] = np.asarray(fit_square(image, size, policy))
    return batch


def images_to_grid(images: Sequence[Image.Image], width: int, height: int,
                   mode: str = "RGB") -> np.ndarray:
    """Images stretched to ``width`` x ``height`` in Pillow ``mode`` (``RGB``, ``L``, ``HSV``),
    stacked to ``[n, height, width, channels]`` uint8 (``channels`` = 1 for ``L``)."""
    channels = Image.getmodebands(mode)
    batch = np.empty((len(images), height, width, channels), dtype=np.uint8)
    for row, image in enumerate(images):
        pixels = _resize(as_rgb(image), width, height).convert(mode)
        batch[row] = np.asarray(pixels).reshape(height, width, channels)
    return batch
