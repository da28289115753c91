"""Handcrafted shape and texture features of paper 000: PHOG and GIST.

**PHOG** (pyramid histogram of oriented gradients): the grey image is cut into ``2^l x 2^l``
cells at pyramid levels ``l = 0..levels``; each cell gets a histogram of gradient orientations
(unsigned, ``bins`` bins over 0-180 degrees, weighted by gradient magnitude, averaged over the
cell); each level is L2-normalised and the levels are concatenated. This is exactly
scikit-image's ``hog`` run once per level with one block covering the whole level
(``pixels_per_cell = size / 2^l``, ``cells_per_block = 2^l``, ``block_norm="L2"``) -- the tests
check that equality. We compute it differently: per-pixel *orientation maps* (the gradient
magnitude put into its orientation bin) are built once, and every pyramid cell is a box sum of
them. That is one vectorised pass for a whole batch (faster than calling ``hog`` per level
and per image; timings in benchmarks/RESULTS.md#shop-the-look), and it is what lets
:mod:`lookalike.recommend.regions` pool the same maps for thousands of sliding windows at once.

**GIST**: a bank of complex Gabor filters (scikit-image ``gabor_kernel``; ``scales`` frequencies
an octave apart x ``orientations`` angles, each kernel made zero-mean so flat regions give no
response) applied by FFT convolution to the grey image (symmetrically padded so borders do not
wrap); the response magnitudes are averaged over a ``grid x grid`` layout. 4 x 8 x 4 x 4 = 512
numbers by default.

Both embedders resize to a square ``size x size`` grey image first (aspect ratio is not kept:
catalogue photos are near 3:4 and every image is treated the same way).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.models.base import Embedder

#: Gabor magnitudes below this are FFT round-off on flat regions, not texture.
GABOR_FLOOR = 1e-5
# scikit-image's block normalisation epsilon, so levels match `hog(..., block_norm="L2")`.
_HOG_EPS = 1e-5


# ---- shared pixel helpers ---------------------------------------------------------------------
def grey_array(image: Image.Image, size: int | None = None) -> np.ndarray:
    """An image as float32 grey levels in [0, 1], optionally resized to ``size x size``."""
    grey = image.convert("L")
    if size is not None and grey.size != (size, size):
        grey = grey.resize((size, size), Image.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def integral_image(maps: np.ndarray) -> np.ndarray:
    """Summed-area table of ``[..., H, W]`` maps as float64 ``[..., H + 1, W + 1]``.

    ``I[..., y, x]`` is the sum of ``maps[..., :y, :x]``, so any box sum is four look-ups.
    float64 because box sums subtract large running totals (float32 loses ~1% on small boxes of
    a 640 x 480 scene).
    """
    shape = maps.shape[:-2] + (maps.shape[-2] + 1, maps.shape[-1] + 1)
    out = np.zeros(shape, dtype=np.float64)
    np.cumsum(maps, axis=-2, dtype=np.float64, out=out[..., 1:, 1:])
    np.cumsum(out[..., 1:, 1:], axis=-1, out=out[..., 1:, 1:])
    return out


def cell_bounds(length: int, parts: int) -> np.ndarray:
    """Where ``parts`` near-equal cells of a ``length``-pixel side start and end (``parts + 1``
    integer offsets); exact when ``parts`` divides ``length``."""
    return np.round(np.linspace(0, length, parts + 1)).astype(np.int64)


# ---- PHOG ---------------------------------------------------------------------------------------
def orientation_maps(grey: np.ndarray, bins: int) -> np.ndarray:
    """Per-pixel gradient magnitude placed in its orientation bin: ``[..., bins, H, W]`` float32.

    Same conventions as scikit-image's ``hog``: central differences with zero gradient on the
    outermost rows/columns, unsigned orientation in [0, 180) degrees, hard binning. Angles are
    computed in float64 because grey levels are multiples of 1/255 and exact 45-degree ties are
    common; float32 rounding would put them in the other bin than ``hog`` does.
    ``grey`` is ``[H, W]`` or a batch ``[n, H, W]``.
    """
    grey = np.asarray(grey, dtype=np.float64)
    g_row = np.zeros_like(grey)
    g_col = np.zeros_like(grey)
    g_row[..., 1:-1, :] = grey[..., 2:, :] - grey[..., :-2, :]
    g_col[..., :, 1:-1] = grey[..., :, 2:] - grey[..., :, :-2]
    magnitude = np.hypot(g_row, g_col).astype(np.float32)
    angle = np.rad2deg(np.arctan2(g_row, g_col)) % 180.0
    index = np.minimum((angle * (bins / 180.0)).astype(np.int64), bins - 1)
    one_hot = index[..., None, :, :] == np.arange(bins).reshape((bins, 1, 1))
    return one_hot * magnitude[..., None, :, :]


def normalise_levels(histograms: np.ndarray, levels: int, bins: int) -> np.ndarray:
    """L2-normalise each pyramid level's block of a ``[n, dim]`` PHOG array (in place)."""
    start = 0
    for level in range(levels + 1):
        width = (4 ** level) * bins
        block = histograms[:, start:start + width]
        norms = np.einsum("ij,ij->i", block, block, dtype=np.float64)[:, None]
        block /= np.sqrt(norms + _HOG_EPS ** 2).astype(block.dtype)
        start += width
    return histograms


def phog_descriptor(grey: np.ndarray, levels: int = 2, bins: int = 8) -> np.ndarray:
    """PHOG of grey image(s) ``[H, W]`` or ``[n, H, W]`` at their own resolution.

    Cells whose size does not divide the image are rounded to whole pixels
    (:func:`cell_bounds`; the bounds of a level are a subset of the next level's, so coarse cells
    are sums of fine ones). Returns ``[n, bins * sum(4^l)]`` float32, each level L2-normalised.
    """
    grey = np.asarray(grey)
    if grey.ndim == 2:
        grey = grey[None]
    height, width = grey.shape[-2:]
    maps = orientation_maps(grey, bins)  # [n, bins, H, W]
    parts = 2 ** levels
    rows, cols = cell_bounds(height, parts), cell_bounds(width, parts)
    if np.any(np.diff(rows) == 0) or np.any(np.diff(cols) == 0):
        raise LookalikeError(f"phog: a {width}x{height} image is too small for {levels} levels")
    sums = np.add.reduceat(np.add.reduceat(maps, rows[:-1], axis=-2), cols[:-1], axis=-1)
    areas = np.outer(np.diff(rows), np.diff(cols)).astype(np.float32)
    blocks = []
    for level in range(levels, -1, -1):  # finest first; each coarser level sums 2 x 2 cells
        cells = sums / areas  # [n, bins, c, c] cell means, as hog averages over the cell
        blocks.append(cells.transpose(0, 2, 3, 1).reshape(len(grey), -1))  # (row, col, bin)
        if level:
            c = sums.shape[-1] // 2
            sums = sums.reshape(*sums.shape[:2], c, 2, c, 2).sum(axis=(3, 5))
            areas = areas.reshape(c, 2, c, 2).sum(axis=(1, 3))
    out = np.concatenate(blocks[::-1], axis=1).astype(np.float32)
    return normalise_levels(out, levels, bins)


class PHOGEmbedder(Embedder):
    """Pyramid histogram of oriented gradients (shape), paper 000's ``x_p``.

    ``levels`` pyramid levels beyond the whole image (2 gives 1 + 4 + 16 cells), ``bins``
    orientation bins over 0-180 degrees, computed on a ``size x size`` grey image.
    """

    kind = "phog"
    batch_size = 256

    def __init__(self, levels: int = 2, bins: int = 8, size: int = 64) -> None:
        if not 0 <= int(levels) <= 4:
            raise LookalikeError(f"phog: levels must be 0..4, got {levels}")
        if int(bins) < 2:
            raise LookalikeError(f"phog: bins must be at least 2, got {bins}")
        if int(size) % 2 ** int(levels) or int(size) < 2 ** int(levels) * 2:
            raise LookalikeError(f"phog: size {size} must be a multiple of 2^levels "
                                 f"({2 ** int(levels)}) and at least twice it")
        self.levels, self.bins, self.size = int(levels), int(bins), int(size)

    @property
    def dim(self) -> int:
        return self.bins * sum(4 ** level for level in range(self.levels + 1))

    def config(self) -> dict[str, Any]:
        return {"levels": self.levels, "bins": self.bins, "size": self.size}

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        grey = np.stack([grey_array(image, self.size) for image in images])
        return phog_descriptor(grey, self.levels, self.bins)


# ---- GIST ---------------------------------------------------------------------------------------
def gabor_bank(frequencies: list[float] | tuple[float, ...], orientations: int) -> list[np.ndarray]:
    """Zero-mean complex Gabor kernels (scikit-image), frequency-major then angle."""
    from skimage.filters import gabor_kernel

    kernels = []
    for frequency in frequencies:
        for k in range(orientations):
            kernel = gabor_kernel(frequency, theta=np.pi * k / orientations)
            kernels.append((kernel - kernel.mean()).astype(np.complex64))
    return kernels


def kernel_spectra(kernels: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """FFTs ``[n_kernels, *shape]`` of kernels centred on the origin of a ``shape`` grid.

    Kernels larger than the grid are cropped to it (their far tails are ~0).
    """
    from scipy import fft

    height, width = shape
    grids = np.zeros((len(kernels), height, width), dtype=np.complex64)
    for n, kernel in enumerate(kernels):
        kh, kw = kernel.shape
        top, left = max(0, (kh - height) // 2), max(0, (kw - width) // 2)
        kernel = kernel[top:top + min(kh, height), left:left + min(kw, width)]
        kh, kw = kernel.shape
        grids[n, :kh, :kw] = kernel
        grids[n] = np.roll(grids[n], (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return fft.fft2(grids, axes=(-2, -1)).astype(np.complex64)


def gabor_magnitudes(grey: np.ndarray, spectra: np.ndarray, pad: int,
                     workers: int | None = None) -> np.ndarray:
    """``|grey * kernel|`` for every kernel: ``[n, n_kernels, H, W]`` float32.

    ``grey`` is ``[n, H, W]``; it is padded symmetrically by ``pad`` so the circular FFT
    convolution does not wrap one border onto the other; ``spectra`` must be for the padded shape.
    ``workers`` is scipy.fft's thread count (None: one).
    """
    from scipy import fft

    padded = np.pad(grey, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    if padded.shape[-2:] != spectra.shape[-2:]:
        raise ValueError(f"spectra are for {spectra.shape[-2:]}, image padded to {padded.shape}")
    image_spectrum = fft.fft2(padded.astype(np.float32), axes=(-2, -1), workers=workers)
    height, width = grey.shape[-2:]
    out = np.empty((grey.shape[0], len(spectra), height, width), dtype=np.float32)
    for n in range(len(spectra)):  # one filter at a time keeps memory at one batch of planes
        response = fft.ifft2(image_spectrum * spectra[n], axes=(-2, -1), workers=workers)
        out[:, n] = np.abs(response[:, pad:pad + height, pad:pad + width])
    # FFT round-off leaves ~1e-7 where there is no texture at all; keep such places exactly 0 so
    # a flat image (or window) has a zero descriptor rather than normalised noise.
    out[out < GABOR_FLOOR] = 0.0
    return out


class GISTEmbedder(Embedder):
    """GIST (texture / spatial envelope): Gabor energy averaged over a coarse grid, paper 000's
    ``x_g``.

    ``scales`` frequencies from ``max_frequency`` (cycles per pixel of the ``size``-pixel image)
    down by octaves, ``orientations`` angles, ``grid x grid`` averaging cells.
    """

    kind = "gist"
    batch_size = 32

    def __init__(self, scales: int = 4, orientations: int = 8, grid: int = 4, size: int = 64,
                 max_frequency: float = 0.25) -> None:
        if int(scales) < 1 or int(orientations) < 1 or int(grid) < 1:
            raise LookalikeError("gist: scales, orientations and grid must be positive")
        if int(size) % int(grid):
            raise LookalikeError(f"gist: size {size} must be a multiple of grid {grid}")
        if not 0 < float(max_frequency) <= 0.5:
            raise LookalikeError(f"gist: max_frequency must be in (0, 0.5], got {max_frequency}")
        self.scales, self.orientations, self.grid = int(scales), int(orientations), int(grid)
        self.size, self.max_frequency = int(size), float(max_frequency)

    @property
    def dim(self) -> int:
        return self.scales * self.orientations * self.grid * self.grid

    @property
    def frequencies(self) -> tuple[float, ...]:
        return tuple(self.max_frequency / 2 ** s for s in range(self.scales))

    @property
    def pad(self) -> int:
        return self.size // 2

    def config(self) -> dict[str, Any]:
        return {"scales": self.scales, "orientations": self.orientations, "grid": self.grid,
                "size": self.size, "max_frequency": self.max_frequency}

    @cached_property
    def kernels(self) -> list[np.ndarray]:
        return gabor_bank(self.frequencies, self.orientations)

    @cached_property
    def _spectra(self) -> np.ndarray:
        side = self.size + 2 * self.pad
        return kernel_spectra(self.kernels, (side, side))

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        grey = np.stack([grey_array(image, self.size) for image in images])
        grey -= grey.mean(axis=(1, 2), keepdims=True)  # kernels are zero-mean; this removes round-off
        energy = gabor_magnitudes(grey, self._spectra, self.pad)  # [n, F, S, S]
        cell = self.size // self.grid
        n, filters = energy.shape[:2]
        pooled = energy.reshape(n, filters, self.grid, cell, self.grid, cell).mean(axis=(3, 5))
        return pooled.reshape(n, -1)
