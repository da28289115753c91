"""A shopper's photo, framed again like a catalogue photo before it is embedded.

A shopper's photo of a catalogue product is the catalogue photo cropped, padded on a plain grey
background and turned a few degrees (the turn fills the corners with the same grey). The
embedder sees the grey frame and the tilt, and look-alikes can overtake the product. Before
search by photo for *this* product (:mod:`.photo_match`) looks up neighbours, the photo is
framed again:

1. :func:`frame_turn` estimates the turn from the straight edges of the content on the plain
   frame (robust line fits of the content's left, right, top and bottom edges);
2. :func:`straighten` turns the photo back and cuts the frame off (:func:`trim_border`);
3. :func:`query_views` gives the straightened photo and the same with a thin white margin (the
   catalogue's own framing around a product that a crop brought too close to the edge).

Photos without a plain, non-white frame come back unchanged (and a white margin).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

#: How far (max channel difference) a pixel of the content is from the frame colour.
FRAME_TOLERANCE = 30.0
#: The white margin of the second view, a share of each side (chosen on validation queries).
MARGIN = 0.05
#: Turns smaller than this (degrees) are left alone; larger than ``MAX_TURN`` are not trusted.
MIN_TURN, MAX_TURN = 0.5, 10.0


def _frame_colour(pixels: np.ndarray) -> np.ndarray:
    """The median colour of the outer two pixels of every side."""
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    return np.median(border, axis=0)


def trim_border(image: Image.Image, *, tolerance: float = FRAME_TOLERANCE,
                share: float = 0.03) -> Image.Image:
    """``image`` without a plain frame around it (a pad, the corners a rotation filled): cropped
    to the rows and columns where at least ``share`` of the pixels differ from the median border
    colour by more than ``tolerance``, and what is left of the frame where it touches the edge
    painted white (the catalogue's background); unchanged when there is no such frame."""
    from scipy import ndimage

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    frame = _frame_colour(pixels)
    distance = np.abs(pixels - frame).max(axis=2)
    differs = distance > tolerance
    rows = np.flatnonzero(differs.mean(axis=1) >= share)
    cols = np.flatnonzero(differs.mean(axis=0) >= share)
    h, w = differs.shape
    if not len(rows) or not len(cols) or frame.min() > 235:
        return image  # no frame, or a white one: the catalogue's own framing
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if ((right - left) * (bottom - top) > 0.97 * h * w or right - left < 0.3 * w
            or bottom - top < 0.3 * h):
        return image
    crop = pixels[top:bottom, left:right].copy()
    labels, _ = ndimage.label(distance[top:bottom, left:right] <= tolerance / 2)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    crop[np.isin(labels, edge[edge > 0])] = 255.0
    return Image.fromarray(crop.astype(np.uint8))


def _content_mask(pixels: np.ndarray, frame: np.ndarray) -> np.ndarray | None:
    """The largest solid region unlike the frame colour, or None when there is none."""
    from scipy import ndimage

    mask = np.abs(pixels - frame).max(axis=2) > FRAME_TOLERANCE
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask))
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def _edge_slopes(mask: np.ndarray) -> list[float]:
    """``dx/dy`` of the content's left and right edges and ``-dy/dx`` of its top and bottom
    edges (Theil-Sen fits over the middle three fifths of each side): all equal the tangent of
    the turn for a turned rectangle."""
    from scipy.stats import theilslopes

    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    slopes = []
    span = rows[-1] - rows[0]
    ys = np.arange(rows[0] + span // 5, rows[-1] - span // 5)
    if len(ys) > 5:
        for xs in (mask[ys].argmax(1), w - 1 - mask[ys, ::-1].argmax(1)):
            slopes.append(float(theilslopes(xs, ys)[0]))
    span = cols[-1] - cols[0]
    xs = np.arange(cols[0] + span // 5, cols[-1] - span // 5)
    if len(xs) > 5:
        for ys_edge in (mask[:, xs].argmax(0), h - 1 - mask[::-1, xs].argmax(0)):
            slopes.append(-float(theilslopes(ys_edge, xs)[0]))
    return slopes


def frame_turn(image: Image.Image) -> float | None:
    """Degrees (counter-clockwise, as :meth:`PIL.Image.Image.rotate`) the photo's content is
    turned on its plain frame, or None when there is no plain, non-white frame to tell."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    frame = _frame_colour(pixels)
    if frame.min() > 235:
        return None  # a white frame: the catalogue's own background, nothing to straighten
    mask = _content_mask(pixels, frame)
    if mask is None or mask.any(1).sum() < 10 or mask.any(0).sum() < 10:
        return None
    slopes = _edge_slopes(mask)
    return float(np.degrees(np.arctan(np.median(slopes)))) if slopes else None


def straighten(image: Image.Image) -> Image.Image:
    """``image`` turned back by :func:`frame_turn` (when the turn is between ``MIN_TURN`` and
    ``MAX_TURN`` degrees) and without its plain frame (:func:`trim_border`)."""
    image = image.convert("RGB")
    turn = frame_turn(image)
    if turn is not None and MIN_TURN <= abs(turn) <= MAX_TURN:
        fill = tuple(int(v) for v in _frame_colour(np.asarray(image, dtype=np.float32)))
        image = image.rotate(-turn, resample=Image.Resampling.BILINEAR, expand=True,
                             fillcolor=fill)
    return trim_border(image)


def with_margin(image: Image.Image, share: float = MARGIN) -> Image.Image:
    """``image`` inside a white margin of ``share`` of its width / height on every side."""
    w, h = image.size
    return ImageOps.expand(image, border=(round(share * w), round(share * h)),
                           fill=(255, 255, 255))


def query_views(image: Image.Image, margin: float = MARGIN) -> list[Image.Image]:
    """The views of a photo whose nearest products are gathered: :func:`straighten`-ed, and
    that with a white margin of ``margin`` (left out when ``margin`` is 0)."""
    straight = straighten(image)
    return [straight, with_margin(straight, margin)] if margin > 0 else [straight]


__all__ = ["FRAME_TOLERANCE", "MARGIN", "trim_border", "frame_turn", "straighten",
           "with_margin", "query_views"]
