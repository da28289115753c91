"""Window features pooled from tables computed once per scene: the base class
(:class:`WindowFeatures`) and the handcrafted extractors -- PHOG and GIST (integral images of
orientation maps and Gabor magnitudes, pooled per pyramid cell), colour histograms (an integral
histogram) -- plus the crop-and-embed fallback (:class:`CropWindows`). How they are chosen:
:func:`lookalike.recommend.feature_maps.windowed_features`."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
from PIL import Image

from lookalike.caches import ProjectCaches
from lookalike.models.base import Embedder, l2_normalise
from lookalike.models.handcrafted import (
    cell_bounds,
    gabor_magnitudes,
    integral_image,
    kernel_spectra,
    orientation_maps,
)
from lookalike.recommend.windows import SCORING_THREADS, SceneError, WindowGrid

# scikit-image's block-normalisation epsilon, as in lookalike.models.handcrafted.
_HOG_EPS = 1e-5


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


