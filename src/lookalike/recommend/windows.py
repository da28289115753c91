"""Scenes, sliding windows and their features, computed once per scene and pooled per window,
and non-maximum suppression: the machinery under shop-the-look (:mod:`lookalike.recommend.regions`)
and the latent SVM's photo bags (:mod:`lookalike.recommend.personal`).

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

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lookalike.caches import ProjectCaches
from lookalike.errors import LookalikeError
from lookalike.models.base import Embedder, l2_normalise
from lookalike.models.handcrafted import (
    cell_bounds,
    gabor_magnitudes,
    integral_image,
    kernel_spectra,
    orientation_maps,
)

# scikit-image's block-normalisation epsilon, as in lookalike.models.handcrafted.
_HOG_EPS = 1e-5

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
class WindowFeatures(ABC):
    """Features of any window of one scene, in the vector space of one embedder.

    Built once per scene (the expensive, shared part); :meth:`for_grid` / :meth:`for_windows`
    then pool features for many windows of one shape. ``block`` is a pixel size every window
    corner and side is a multiple of (the stride grid); extractors may use it to work on blocks.
    """

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1) -> None:
        self.embedder = embedder
        self.pixels = pixels
        self.block = int(block)

    @abstractmethod
    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Features of windows ``[ys, ys + height) x [xs, xs + width)`` before the L2 norm."""

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        """:meth:`raw` of every window of a grid, row-major; extractors override it with strided
        views of their tables, which is much faster than gathering arbitrary windows."""
        return self.raw(grid.width, grid.height, *grid.corners())

    def for_grid(self, grid: WindowGrid) -> np.ndarray:
        """Unit-length ``[len(grid), dim]`` features of every window of ``grid``."""
        return l2_normalise(self.raw_grid(grid))

    def for_windows(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Unit-length ``[n, dim]`` features of ``n`` windows of one shape."""
        ys = np.asarray(ys, dtype=np.int64)
        xs = np.asarray(xs, dtype=np.int64)
        return l2_normalise(self.raw(int(width), int(height), ys, xs))

    def for_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Features of boxes ``(x0, y0, x1, y1)`` of any shapes, in the given order."""
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        shapes = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        out = np.zeros((len(boxes), self.embedder.dim), dtype=np.float32)
        for width, height in np.unique(shapes, axis=0):
            rows = np.flatnonzero((shapes[:, 0] == width) & (shapes[:, 1] == height))
            out[rows] = self.for_windows(int(width), int(height), boxes[rows, 1], boxes[rows, 0])
        return out


def _cell_sums(corners: np.ndarray) -> np.ndarray:
    """Cell sums ``[n, gy, gx, C]`` (float32) from integral-image corner values
    ``[n, gy + 1, gx + 1, C]``."""
    sums = corners[:, 1:, 1:] - corners[:, :-1, 1:]
    sums -= corners[:, 1:, :-1]
    sums += corners[:, :-1, :-1]
    return sums.astype(np.float32)


def _cell_sums_gather(table: np.ndarray, ys: np.ndarray, xs: np.ndarray, rows: np.ndarray,
                      cols: np.ndarray) -> np.ndarray:
    """Cell sums ``[n, gy, gx, C]`` of arbitrary windows (their cell bounds ``rows`` x ``cols``
    relative to the corners ``ys``, ``xs``), from a channel-last integral image."""
    corner_y = ys[:, None] + rows[None, :]
    corner_x = xs[:, None] + cols[None, :]
    return _cell_sums(table[corner_y[:, :, None], corner_x[:, None, :]])


def _cell_sums_grid(table: np.ndarray, grid: WindowGrid, rows: np.ndarray,
                    cols: np.ndarray) -> np.ndarray:
    """The same for every window of a grid: ``[len(grid), gy, gx, C]`` float32.

    Computed separably from strided *views* of the table (nothing is gathered): per pair of
    adjacent cell rows, the differences of the table along y at every cell column boundary
    (``gy x (gx + 1)`` float64 subtractions per window), then adjacent columns are subtracted
    (``gy x gx``), written straight into the float32 output -- about half the work of gathering
    the ``(gy + 1) x (gx + 1)`` corners and combining four of them per cell.
    """
    ny, nx, step = len(grid.ys), len(grid.xs), grid.stride
    y0, x0 = int(grid.ys[0]), int(grid.xs[0])
    channels = table.shape[-1]
    out = np.empty((ny, nx, len(rows) - 1, len(cols) - 1, channels), dtype=np.float32)

    def y_view(offset: int) -> np.ndarray:  # [ny, W + 1, C]: the table row under every window
        start = y0 + int(offset)
        return table[start: start + (ny - 1) * step + 1: step]

    def x_view(band: np.ndarray, offset: int) -> np.ndarray:  # [ny, nx, C]
        start = x0 + int(offset)
        return band[:, start: start + (nx - 1) * step + 1: step]

    upper = y_view(rows[0])
    for i in range(len(rows) - 1):
        lower = y_view(rows[i + 1])
        # Column-boundary differences of this band of cells: [gx + 1] x [ny, nx, C] float64.
        edges = [x_view(lower, c) - x_view(upper, c) for c in cols]
        for j in range(len(cols) - 1):
            np.subtract(edges[j + 1], edges[j], out=out[:, :, i, j], casting="same_kind")
        upper = lower
    return out.reshape(ny * nx, len(rows) - 1, len(cols) - 1, channels)


def _box_sums(table: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray,
              x1: np.ndarray) -> np.ndarray:
    """Box sums from a channel-last integral image ``[H + 1, W + 1, C]`` (broadcasting)."""
    return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]


def _grey(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32) / 255.0


class PHOGWindows(WindowFeatures):
    """PHOG of windows: one integral image of the scene's orientation maps, pooled per cell.

    The pyramid's cell corners are gathered once at the finest level (``(2^L + 1)^2`` look-ups
    per window); coarser levels are differences of a subset of those corners.
    """

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1) -> None:
        super().__init__(embedder, pixels, block)
        maps = orientation_maps(_grey(pixels), embedder.bins)  # [bins, H, W]
        self.table = integral_image(maps).transpose(1, 2, 0).copy()  # [H+1, W+1, bins]

    def _bounds(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        parts = 2 ** self.embedder.levels
        rows, cols = cell_bounds(height, parts), cell_bounds(width, parts)
        if np.any(np.diff(rows) == 0) or np.any(np.diff(cols) == 0):
            raise SceneError(f"phog: {width}x{height} px windows are too small for "
                             f"{self.embedder.levels} levels")
        return rows, cols

    def _from_cells(self, sums: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """PHOG vectors from the finest cells' sums ``[n, P, P, bins]`` (float32).

        Each level is built in its own contiguous block (cell means, L2-normalised with the
        same epsilon as :func:`~lookalike.models.handcrafted.normalise_levels`), coarser cells
        being sums of 2 x 2 finer ones; the blocks are then concatenated coarsest first.
        """
        levels = self.embedder.levels
        n = len(sums)
        areas = np.outer(np.diff(rows), np.diff(cols)).astype(np.float32)
        blocks = []
        for level in range(levels, -1, -1):
            block = (sums / areas[None, :, :, None]).reshape(n, -1)
            norms = np.sqrt(np.einsum("ij,ij->i", block, block) + _HOG_EPS ** 2)
            block *= (1.0 / norms)[:, None]
            blocks.append(block)
            if level:  # 2 x 2 finer cells make one coarser cell
                sums = (sums[:, 0::2, 0::2] + sums[:, 1::2, 0::2]
                        + sums[:, 0::2, 1::2] + sums[:, 1::2, 1::2])
                areas = (areas[0::2, 0::2] + areas[1::2, 0::2]
                         + areas[0::2, 1::2] + areas[1::2, 1::2])
        return np.concatenate(blocks[::-1], axis=1)

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        rows, cols = self._bounds(width, height)
        return self._from_cells(_cell_sums_gather(self.table, ys, xs, rows, cols), rows, cols)

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        rows, cols = self._bounds(grid.width, grid.height)
        return self._from_cells(_cell_sums_grid(self.table, grid, rows, cols), rows, cols)


class GISTWindows(WindowFeatures):
    """GIST of windows: the Gabor bank applied to the whole scene once (FFT), grid-cell means
    of the response magnitudes per window (the bank's FFTs kept in ``caches`` when given)."""

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1,
                 caches: ProjectCaches | None = None) -> None:
        super().__init__(embedder, pixels, block)
        from scipy import fft

        grey = _grey(pixels)
        grey -= grey.mean()
        pad = embedder.pad
        # FFT shapes are rounded up to multiples of 64, so scenes of similar sizes share one
        # cached filter bank (building it costs as much as filtering the scene).
        shape = (fft.next_fast_len(-(-(grey.shape[0] + 2 * pad) // 64) * 64),
                 fft.next_fast_len(-(-(grey.shape[1] + 2 * pad) // 64) * 64))
        spectra = self._spectra(embedder, shape, caches)
        # Pad to the fast FFT shape: a symmetric border of `pad`, the rest on the far side.
        extra = (shape[0] - grey.shape[0] - 2 * pad, shape[1] - grey.shape[1] - 2 * pad)
        padded = np.pad(grey, ((pad, pad + extra[0]), (pad, pad + extra[1])), mode="symmetric")
        energy = gabor_magnitudes(padded[None], spectra, 0, workers=SCORING_THREADS)[0]
        energy = energy[:, pad:pad + grey.shape[0], pad:pad + grey.shape[1]]
        self.table = integral_image(energy).transpose(1, 2, 0).copy()  # [H+1, W+1, F]

    @staticmethod
    def _spectra(embedder: Embedder, shape: tuple[int, int],
                 caches: ProjectCaches | None) -> np.ndarray:
        """The Gabor bank's FFTs for a padded scene shape, kept in ``caches`` for the next
        scene of that shape (building them costs as much as filtering a 640 x 480 scene)."""
        if caches is None:
            return kernel_spectra(embedder.kernels, shape)
        return caches.gist_spectra.get_or_make((embedder.embedder_id, shape),
                                               lambda: kernel_spectra(embedder.kernels, shape))

    def _from_cells(self, sums: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        areas = np.outer(np.diff(rows), np.diff(cols)).astype(np.float32)
        sums /= areas[None, :, :, None]  # [n, g, g, F] cell means
        # The embedder's layout is filter-major: [F, g, g].
        return sums.transpose(0, 3, 1, 2).reshape(len(sums), -1)

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        grid = self.embedder.grid
        rows, cols = cell_bounds(height, grid), cell_bounds(width, grid)
        return self._from_cells(_cell_sums_gather(self.table, ys, xs, rows, cols), rows, cols)

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        cells = self.embedder.grid
        rows, cols = cell_bounds(grid.height, cells), cell_bounds(grid.width, cells)
        return self._from_cells(_cell_sums_grid(self.table, grid, rows, cols), rows, cols)


class FusionWindows(WindowFeatures):
    """A fusion's window features: its parts' windowed features, combined with its weights."""

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1,
                 caches: ProjectCaches | None = None) -> None:
        super().__init__(embedder, pixels, block)
        self.parts = [windowed_features(part, pixels, block, caches=caches)
                      for part in embedder.parts]

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return self.embedder.combine([p.for_windows(width, height, ys, xs) for p in self.parts])

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        return self.embedder.combine([p.for_grid(grid) for p in self.parts])


class CropWindows(WindowFeatures):
    """The naive way: crop every window and embed it (any embedder; the benchmarks' baseline)."""

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        image = Image.fromarray(self.pixels)
        crops = (image.crop((int(x), int(y), int(x) + width, int(y) + height))
                 for y, x in zip(ys, xs))
        return self.embedder.embed(crops)


class ColourWindows(WindowFeatures):
    """Colour histograms of windows from an integral histogram.

    The embedder must expose ``pixel_bins(rgb_uint8_array) -> int array [H, W]`` (the histogram
    bin of every pixel), ``n_bins`` and ``histogram_features(counts [n, n_bins], area)`` (counts
    of a window of ``area`` pixels to its raw vector). Per-bin counts are summed over
    ``block x block`` tiles of the stride grid first, so the table is
    ``(H / block) x (W / block) x n_bins`` integers.
    """

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1) -> None:
        super().__init__(embedder, pixels, block)
        bins = np.asarray(embedder.pixel_bins(pixels), dtype=np.int64)
        n_bins = int(embedder.n_bins)
        height, width = bins.shape
        rows, cols = math.ceil(height / block), math.ceil(width / block)
        tile = (np.arange(height) // block)[:, None] * cols + (np.arange(width) // block)[None, :]
        counts = np.bincount((tile * n_bins + bins).ravel(), minlength=rows * cols * n_bins)
        table = np.zeros((rows + 1, cols + 1, n_bins), dtype=np.int32)  # < 2^31 pixels
        np.cumsum(np.cumsum(counts.reshape(rows, cols, n_bins), axis=0), axis=1,
                  out=table[1:, 1:])
        self.table = table

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        b = self.block
        if width % b or height % b or np.any(ys % b) or np.any(xs % b):
            raise SceneError(f"colour windows must lie on the {b}-px grid they were built for")
        y0, x0 = ys // b, xs // b
        counts = _box_sums(self.table, y0, x0, y0 + height // b, x0 + width // b)
        return self.embedder.histogram_features(counts.astype(np.float32), width * height)

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        b = self.block
        if grid.width % b or grid.height % b or grid.stride % b or grid.ys[0] % b or \
                grid.xs[0] % b:
            return super().raw_grid(grid)
        step, ny, nx = grid.stride // b, len(grid.ys), len(grid.xs)
        top, left = int(grid.ys[0]) // b, int(grid.xs[0]) // b
        tall, wide = grid.height // b, grid.width // b

        def view(dy: int, dx: int) -> np.ndarray:  # the table at one corner of every window
            return self.table[top + dy: top + dy + (ny - 1) * step + 1: step,
                              left + dx: left + dx + (nx - 1) * step + 1: step]

        counts = view(tall, wide) - view(0, wide)
        counts -= view(tall, 0)
        counts += view(0, 0)
        features = self.embedder.histogram_features(
            counts.reshape(ny * nx, -1).astype(np.float32), grid.width * grid.height)
        return features


def _coverage(starts: np.ndarray, stops: np.ndarray, cells: int) -> np.ndarray:
    """How much of each unit cell ``[c, c + 1)`` each span ``[start, stop)`` covers: ``[n, cells]``."""
    edges = np.arange(cells, dtype=np.float64)
    low = np.maximum(starts[:, None], edges[None, :])
    high = np.minimum(stops[:, None], edges[None, :] + 1.0)
    return np.clip(high - low, 0.0, None)


class FeatureMapWindows(WindowFeatures):
    """CNN window features: one forward pass over the scene, area-weighted pooling per window.

    The embedder must expose ``feature_map(image, scale) -> (array [h, w, C], stride)``, the
    feature map of the whole image scaled by ``scale`` before the network's global pooling,
    ``stride`` being how many *scene* pixels one map cell spans; and may expose
    ``pool_features(pooled [n, C])`` mapping a region's mean feature to its vector (identity for
    global average pooling). A window's mean is weighted by how much of each cell it covers, so
    windows need not align with cells; that weighting is separable, so a whole grid is two
    matrix products. ``scene_scale`` (default: the embedder's ``window_scene_scale`` or 1.5)
    upsamples the scene first so that small windows still span about a map cell (one cell is
    32 / 1.5 = 21 scene pixels).
    """

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1,
                 scene_scale: float | None = None) -> None:
        super().__init__(embedder, pixels, block)
        scale = scene_scale if scene_scale is not None else getattr(
            embedder, "window_scene_scale", 1.5)
        fmap, stride = embedder.feature_map(Image.fromarray(pixels), scale=scale)
        self.map = np.ascontiguousarray(fmap, dtype=np.float32)  # [h, w, C]
        self.stride = float(stride)
        # (grid key, column-weighted map, column areas) of the last grid shape; see raw_grid.
        self._columns: tuple[tuple[int, ...] | None, np.ndarray, np.ndarray] = (
            None, np.zeros((0, 0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32))

    def _pool(self, pooled: np.ndarray) -> np.ndarray:
        hook = getattr(self.embedder, "pool_features", None)
        return hook(pooled) if hook is not None else pooled

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        rows = _coverage(ys / self.stride, (ys + height) / self.stride, self.map.shape[0])
        cols = _coverage(xs / self.stride, (xs + width) / self.stride, self.map.shape[1])
        sums = np.einsum("nr,nc,rcd->nd", rows, cols, self.map, optimize=True)
        area = rows.sum(axis=1) * cols.sum(axis=1)
        return self._pool((sums / np.maximum(area, 1e-12)[:, None]).astype(np.float32))

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        """Pooled map features of a grid (or a band of one) with two matrix products: the
        column weights are applied once per grid shape (``[h, nx, C]``, kept for the next band
        of the same grid), then the row weights of the band, restricted to the map rows the
        band's windows touch. (numpy/BLAS rather than PyTorch here: alternating PyTorch's
        OpenMP threads with the BLAS threads of the scorers made both wait for each other.)

        Bands are scored on several threads (:data:`SCORING_THREADS`), so the cache is one
        tuple read and replaced atomically: a thread never mixes one grid's columns with
        another's areas (it did when they were three attributes -- a shape error).
        """
        key = (grid.width, int(grid.xs[0]), len(grid.xs), grid.stride)
        cached_key, columns, column_area = self._columns
        if cached_key != key:
            cols = _coverage(grid.xs / self.stride, (grid.xs + grid.width) / self.stride,
                             self.map.shape[1]).astype(np.float32)  # [nx, w]
            columns = np.ascontiguousarray(np.matmul(cols[None, :, :], self.map))  # [h, nx, C]
            column_area = cols.sum(axis=1)
            self._columns = (key, columns, column_area)
        rows = _coverage(grid.ys / self.stride, (grid.ys + grid.height) / self.stride,
                         self.map.shape[0]).astype(np.float32)  # [ny, h]
        used = np.flatnonzero(rows.any(axis=0))
        low, high = int(used[0]), int(used[-1]) + 1
        sums = rows[:, low:high] @ columns[low:high].reshape(high - low, -1)
        area = rows.sum(axis=1)[:, None] * column_area[None, :]  # [ny, nx]
        pooled = sums.reshape(len(rows), len(grid.xs), -1)
        pooled /= np.maximum(area, 1e-12)[:, :, None]
        return self._pool(pooled.reshape(len(grid), -1))


class HSVHistogramAdapter:
    """``pixel_bins`` / ``histogram_features`` for :class:`~lookalike.models.baselines.
    HSVHistogramEmbedder` (global histogram, ``grid=0``), so :class:`ColourWindows` can pool it.

    Same binning (Pillow HSV, the embedder's own ``bin_of``), same background handling and the
    same normalisation (sum to 1, square root); the only difference from embedding a crop is
    that the crop is not first stretched to ``work_size`` pixels.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.n_bins = int(embedder.bins_per_histogram)
        self.kind, self.dim = embedder.kind, embedder.dim
        self._background: np.ndarray | None = None

    @staticmethod
    def supports(embedder: Embedder) -> bool:
        return embedder.kind == "hsv-histogram" and getattr(embedder, "grid", 1) == 0

    def pixel_bins(self, pixels: np.ndarray) -> np.ndarray:
        hsv = np.asarray(Image.fromarray(pixels).convert("HSV"))
        index, background = self.embedder.bin_of(hsv)
        if self._background is None:  # which bins are backdrop bins (depends on bins only)
            marks = np.zeros(self.n_bins, dtype=bool)
            marks[index[background]] = True
            self._background = marks
        return index

    def histogram_features(self, counts: np.ndarray, area: int) -> np.ndarray:
        """Counts of windows of ``area`` pixels -> the embedder's normalised histogram
        (in place: ``counts`` is a fresh float32 array)."""
        if self.embedder.ignore_background and self._background is not None:
            kept = np.where(self._background[None, :], 0.0, counts)
            empty = kept.sum(axis=1) == 0  # all backdrop: keep it, as the embedder does
            counts = np.where(empty[:, None], counts, kept)
            counts /= np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        else:
            counts *= 1.0 / area  # every pixel is counted once: the sum is the area
        return np.sqrt(counts, out=counts) if self.embedder.sqrt else counts


class EfficientNetMaps:
    """``feature_map`` for the EfficientNet-Lite embedder: one pass of its network over the
    whole scaled scene, returning the last convolution's output (1,280 channels) before global
    pooling.

    The pass runs in ONNX Runtime (FP32) on a graph exported once per machine from the
    embedder's own PyTorch network with the scene's height and width left dynamic (uint8 pixels
    in, the Lite input scaling inside the graph), cached beside the embedder's ONNX files. On
    a 960 x 720 input it took 0.16 s of CPU against 1.0 s for PyTorch eager (same outputs to
    3e-5), which is most of shop-the-look's CNN budget. ``backend="torch"`` keeps the PyTorch
    pass (batch norm folded, channels-last). The catalogue's vectors may come from the
    embedder's int8 ONNX model; both compute the same features up to quantisation. The network
    and the session are kept in ``caches`` (a project's) when given, else by this object only.
    """

    #: Bump when the exported graph changes (part of the cached file's name).
    BUILD = 1

    def __init__(self, embedder: Embedder, backend: str = "onnx",
                 caches: ProjectCaches | None = None) -> None:
        if backend not in ("onnx", "torch"):
            raise LookalikeError(f"feature-map backend must be 'onnx' or 'torch', got {backend!r}")
        self.embedder = embedder
        self.backend = backend
        self.caches = caches if caches is not None else ProjectCaches()
        self.kind, self.dim = embedder.kind, embedder.dim

    @staticmethod
    def supports(embedder: Embedder) -> bool:
        return hasattr(embedder, "network") and embedder.kind.startswith("efficientnet")

    def _network(self) -> Any:
        return self.caches.feature_nets.get_or_make(self.embedder.embedder_id,
                                                    self._build_network)

    def _build_network(self) -> Any:
        import torch

        net = self.embedder.network()
        try:  # the embedder's own folding (same outputs, ~25% faster on CPU)
            from lookalike.models.efficientnet import _fold_batch_norms

            _fold_batch_norms(net)
        except ImportError:  # pragma: no cover - an older embedder module
            pass
        return net.to(memory_format=torch.channels_last)

    def onnx_path(self) -> Any:
        """The cached feature-map graph: ``<embedder_id>-featuremap-b<BUILD>-ort<version>.onnx``
        in the embedder's ONNX cache folder."""
        import onnxruntime

        from lookalike.models.efficientnet import default_cache_dir

        folder = getattr(self.embedder, "cache_dir", None) or default_cache_dir()
        return folder / (f"{self.embedder.embedder_id}-featuremap-b{self.BUILD}"
                         f"-ort{onnxruntime.__version__}.onnx")

    def _export(self, path: Any) -> None:
        import contextlib
        import io
        import os
        import tempfile
        import warnings

        import torch

        from lookalike.models.efficientnet import scale_pixels

        net = self._network()

        class FeatureMap(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # uint8 [1, H, W, 3]
                return self.net.extract_features(scale_pixels(pixels))

        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.zeros((1, 224, 224, 3), dtype=torch.uint8)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=path.parent) as work:
            built = os.path.join(work, "featuremap.onnx")
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")  # the TorchScript exporter is chatty
                torch.onnx.export(FeatureMap().eval(), (example,), built, dynamo=False,
                                  opset_version=17, input_names=["pixels"],
                                  output_names=["features"],
                                  dynamic_axes={"pixels": {1: "height", 2: "width"},
                                                "features": {2: "rows", 3: "cols"}})
            os.replace(built, path)  # atomic: a reader sees the whole file or none

    def _session(self) -> Any:
        path = self.onnx_path()
        return self.caches.feature_sessions.get_or_make(str(path),
                                                        lambda: self._build_session(path))

    def _build_session(self, path: Any) -> Any:
        import onnxruntime as ort

        if not path.is_file():
            self._export(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        threads = getattr(self.embedder, "num_threads", None)
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        # Idle workers sleep instead of spinning (as the embedder's own runner does).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def feature_map(self, image: Image.Image, scale: float = 1.5) -> tuple[np.ndarray, float]:
        width, height = image.size
        scaled = image.resize((max(32, round(width * scale)), max(32, round(height * scale))),
                              Image.BILINEAR)
        pixels = np.asarray(scaled.convert("RGB"), dtype=np.uint8)
        if self.backend == "onnx":
            fmap = self._session().run(None, {"pixels": pixels[None]})[0][0]  # [C, h, w]
            fmap = np.ascontiguousarray(fmap.transpose(1, 2, 0))
        else:
            import torch

            net = self._network()
            with torch.inference_mode():
                x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float()
                x = (x * (1.0 / 127.5) - 1.0).contiguous(memory_format=torch.channels_last)
                fmap = net.extract_features(x)[0].permute(1, 2, 0).contiguous().numpy()
        return fmap, width / fmap.shape[1]


def windowed_features(embedder: Embedder, pixels: np.ndarray, block: int = 1,
                      fast: bool = True, caches: ProjectCaches | None = None) -> WindowFeatures:
    """The fastest :class:`WindowFeatures` for ``embedder`` (crop-and-embed when it has none).

    ``caches`` (a project's) keeps what scenes share (GIST filter banks, the EfficientNet
    feature-map network and session) for the next call; without it nothing is kept."""
    if fast:
        kind = embedder.kind
        if kind == "phog":
            return PHOGWindows(embedder, pixels, block)
        if kind == "gist":
            return GISTWindows(embedder, pixels, block, caches=caches)
        if kind == "fusion":
            return FusionWindows(embedder, pixels, block, caches=caches)
        if HSVHistogramAdapter.supports(embedder):
            return ColourWindows(HSVHistogramAdapter(embedder), pixels, block)  # type: ignore[arg-type]
        if EfficientNetMaps.supports(embedder):
            return FeatureMapWindows(EfficientNetMaps(embedder, caches=caches), pixels,  # type: ignore[arg-type]
                                     block)
        if hasattr(embedder, "pixel_bins") and hasattr(embedder, "histogram_features"):
            return ColourWindows(embedder, pixels, block)
        if hasattr(embedder, "feature_map"):
            return FeatureMapWindows(embedder, pixels, block)
    return CropWindows(embedder, pixels, block)


def has_fast_windows(embedder: Embedder) -> bool:
    """Whether ``embedder`` (or every part of a fusion) has a pooled, crop-free window path."""
    if embedder.kind == "fusion":
        return all(has_fast_windows(part) for part in embedder.parts)
    return (embedder.kind in ("phog", "gist") or HSVHistogramAdapter.supports(embedder)
            or EfficientNetMaps.supports(embedder)
            or (hasattr(embedder, "pixel_bins") and hasattr(embedder, "histogram_features"))
            or hasattr(embedder, "feature_map"))


def naive_window_features(embedder: Embedder, pixels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Crop each box and embed it: the slow reference the fast paths are measured against."""
    return CropWindows(embedder, pixels).for_boxes(boxes)


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
