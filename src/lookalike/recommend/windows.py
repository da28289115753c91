"""Scenes and sliding windows: a scene photo at working resolution, grids of windows over it,
box IoU and non-maximum suppression. The machinery under shop-the-look
(:mod:`lookalike.recommend.regions`) and the latent SVM's photo bags
(:mod:`lookalike.recommend.personal`); the windows' features are pooled by
:mod:`lookalike.recommend.window_features` (handcrafted) and
:mod:`lookalike.recommend.feature_maps` (CNN maps, fusion, and the choice of the fastest path).

Paper 000 (section III.C, Table 3, Fig. 7) slides square ``N x N`` windows (N = 20..100 px) over
a scene with a stride ``M < N``, describes every window with PHOG + colour + GIST features and
ranks the windows with the shopper's model. Windows here are ``N`` wide and ``aspect x N`` high
(default 3:4, the catalogue photos' shape; ``aspect=1`` is the paper's squares). Describing the
~90,000 windows of a 640 x 480 scene by cropping and re-embedding each one takes minutes; here
every feature is computed **once per scene** and pooled per window:

- colour (``hsv-histogram``): an *integral histogram* (per-bin counts summed over blocks of the
  window stride, then cumulated), so a window's histogram is four look-ups per bin;
- PHOG (``phog``): orientation maps of the whole scene are computed once; every pyramid cell of
  every window is a box sum of an integral image of those maps;
- GIST (``gist``): the Gabor bank is applied to the whole scene by FFT once; the 4 x 4 grid
  cells of every window are box sums of the response magnitudes;
- CNN (``efficientnet-lite0``): one pass of the network over the (upscaled) scene gives a feature
  map before global pooling; a window's vector is the mean of the map under it, weighted by how
  much of each cell the window covers -- the global average pooling the embedder applies to a
  whole photo;
- ``fusion``: the parts' window features combined with the fusion's weights.

For a whole grid of windows the look-ups are strided views of the tables. Windowed features are
computed at the scene's own resolution, while catalogue photos are embedded at each embedder's
input size: colour histograms do not depend on scale; PHOG and GIST describe the window at its
own scale (they equal the features of the crop computed without resizing -- the tests check
this); the CNN sees each window with the scene around it. Any other embedder falls back to
cropping and embedding every window (:class:`CropWindows`).

Vectorised non-maximum suppression: :func:`nms` (:func:`box_iou`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError

#: Paper 000's window sizes (Table 3).
DEFAULT_WINDOWS: tuple[int, ...] = (20, 30, 40, 50, 60, 70, 80, 90, 100)
#: A scene's longer side is scaled down to this before windows are placed (boxes are reported in
#: the original photo's coordinates).
DEFAULT_MAX_SIDE = 1024
#: Threads that pool and score window bands, and run the GIST filter bank's FFTs.
SCORING_THREADS = min(2, os.cpu_count() or 1)


class SceneError(LookalikeError):
    """A scene photo cannot be searched with the requested windows (too small, bad settings)."""


# ---- scenes and windows -------------------------------------------------------------------------
@dataclass
class PreparedScene:
    """A scene as an RGB array at working resolution, and how it maps to the original photo."""

    pixels: np.ndarray  # uint8 [H, W, 3]
    scale: float  # working pixels per original pixel (<= 1)
    original_size: tuple[int, int]  # (width, height)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in working coordinates -> integer boxes in the original photo."""
        boxes = np.asarray(boxes, dtype=np.float64) / self.scale
        width, height = self.original_size
        boxes = np.round(boxes).astype(np.int64)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
        return boxes


def prepare_scene(image: Image.Image | np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> PreparedScene:
    """An RGB working copy of a scene whose longer side is at most ``max_side`` pixels.

    Grey and RGBA photos are converted to RGB; huge photos are scaled down (window sizes are
    then in working pixels; boxes come back in the original's coordinates).
    """
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise SceneError(f"scene array must be [H, W, 3], got shape {array.shape}")
        image = Image.fromarray(np.ascontiguousarray(array[:, :, :3]).astype(np.uint8))
    if max_side < 1:
        raise SceneError(f"max_side must be positive, got {max_side}")
    rgb = image.convert("RGB")
    width, height = rgb.size
    if width == 0 or height == 0:
        raise SceneError("the scene photo is empty (0 pixels)")
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                         Image.BILINEAR)
        scale = rgb.size[0] / width
    return PreparedScene(np.asarray(rgb, dtype=np.uint8), scale, (width, height))


@dataclass
class WindowGrid:
    """All ``width x height`` windows whose top-left corners lie on a ``stride`` grid."""

    width: int
    height: int
    stride: int
    ys: np.ndarray  # top offsets
    xs: np.ndarray  # left offsets

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def size(self) -> int:
        """The window size as named by the caller (its width)."""
        return self.width

    def corners(self) -> tuple[np.ndarray, np.ndarray]:
        """Top and left offsets of every window, row-major (``len(self)`` each)."""
        ys, xs = np.meshgrid(self.ys, self.xs, indexing="ij")
        return ys.ravel(), xs.ravel()

    def boxes(self) -> np.ndarray:
        """``[n, 4]`` boxes ``(x0, y0, x1, y1)`` in the same order as :meth:`corners`."""
        ys, xs = self.corners()
        return np.stack([xs, ys, xs + self.width, ys + self.height], axis=1)


def window_grids(height: int, width: int, sizes: Sequence[int] = DEFAULT_WINDOWS,
                 stride: int | None = None, aspect: float = 1.0) -> list[WindowGrid]:
    """One grid per window size that fits in a ``width x height`` scene.

    A size ``N`` gives ``N``-wide windows ``aspect * N`` high (rounded to the stride, so every
    window lies on the stride grid); ``aspect = 1`` gives paper 000's ``N x N`` squares, ``4/3``
    the shape of the catalogue's 60 x 80 photos. ``stride`` defaults to a quarter of the smallest
    window (5 px for 20 px windows, paper 000's example). Sizes that do not fit are skipped; if
    none fits a :class:`SceneError` says so.
    """
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 4:
        raise SceneError(f"window sizes must be at least 4 px, got {sizes}")
    if not 0.25 <= float(aspect) <= 4.0:
        raise SceneError(f"window aspect (height / width) must be in [0.25, 4], got {aspect}")
    stride = int(stride) if stride is not None else max(1, sizes[0] // 4)
    if stride < 1:
        raise SceneError(f"stride must be at least 1 px, got {stride}")
    if stride >= sizes[0]:
        raise SceneError(f"stride {stride} must be smaller than the smallest window {sizes[0]} "
                         "(windows must overlap, M < N)")
    grids, shapes = [], []
    for size in sizes:
        tall = size if aspect == 1.0 else max(stride, stride * round(size * aspect / stride))
        shapes.append(f"{size}x{tall}")
        if size <= width and tall <= height:
            grids.append(WindowGrid(size, tall, stride, np.arange(0, height - tall + 1, stride),
                                    np.arange(0, width - size + 1, stride)))
    if not grids:
        raise SceneError(f"the scene ({width}x{height} px) is smaller than the smallest window "
                         f"({shapes[0]} px); use a bigger photo or smaller windows")
    return grids


# ---- windowed features --------------------------------------------------------------------------

# ---- non-maximum suppression --------------------------------------------------------------------
def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box ``(x0, y0, x1, y1)`` with each of ``boxes [n, 4]``."""
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = max(0.0, (box[2] - box[0]) * (box[3] - box[1]))
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3,
        max_keep: int | None = None, candidates: int | None = 4096) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    A box is dropped when its IoU with an already kept, better-scoring box is *above*
    ``iou_threshold``. Each step is one vectorised IoU of the best remaining box against all the
    others. Only the ``candidates`` best-scoring boxes are considered (None: all); ties keep the
    earlier box. NaN scores are never kept.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"nms: iou_threshold must be in [0, 1], got {iou_threshold}")
    valid = np.flatnonzero(~np.isnan(scores))
    order = valid[np.argsort(-scores[valid], kind="stable")]
    if candidates is not None:
        order = order[:candidates]
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
