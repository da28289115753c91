"""Two embedders without learned weights: the baselines every real model must beat.

``pixels``         the image itself, shrunk and flattened; cosine similarity between such rows is
                   the "raw-pixel" baseline of the evaluation protocol.
``hsv-histogram``  the quantised HSV colour histogram of paper 000 (Yin & Zhang 2020, colour
                   feature section: HSV space, global histogram), optionally with a spatial grid.

Both are pure numpy over Pillow's C resizers and colour conversion: no per-pixel Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.models.base import Embedder
from lookalike.models.preprocess import images_to_grid, whole_number

_COLOUR_MODES = {"rgb": "RGB", "grey": "L"}


class PixelsEmbedder(Embedder):
    """Raw pixels: resize (stretch) to ``width`` x ``height``, greyscale or RGB, flatten.

    Defaults (32 x 32 RGB, no centring) give the documented raw-pixel baseline: products P@10
    (article_type, test vs train) 0.67, and with ``size=28, colour="grey"`` Fashion-MNIST P@10
    0.81. ``centre=True`` subtracts each image's mean intensity first, which makes cosine
    similarity insensitive to overall brightness (products P@10 0.68).
    """

    kind = "pixels"
    batch_size = 512

    def __init__(self, size: int | tuple[int, int] = 32, colour: str = "rgb",
                 centre: bool = False) -> None:
        if isinstance(size, (int, float, str)):
            width = height = whole_number("pixels size", size)
        elif len(size) == 2:
            width, height = (whole_number("pixels size", s) for s in size)
        else:
            raise LookalikeError(f"pixels: size must be N or (width, height), not {size!r}")
        if width < 1 or height < 1 or width * height > 1024 * 1024:
            raise LookalikeError(f"pixels: size {width}x{height} is out of range (1..1024x1024)")
        if colour not in _COLOUR_MODES:
            raise LookalikeError(f"pixels: colour must be 'rgb' or 'grey', not {colour!r}")
        self.width, self.height = width, height
        self.colour = colour
        self.centre = bool(centre)

    @property
    def dim(self) -> int:
        return self.width * self.height * (3 if self.colour == "rgb" else 1)

    def config(self) -> dict[str, Any]:
        size: int | list[int] = (self.width if self.width == self.height
                                 else [self.width, self.height])
        return {"size": size, "colour": self.colour, "centre": self.centre}

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        grid = images_to_grid(images, self.width, self.height, _COLOUR_MODES[self.colour])
        vectors = grid.reshape(len(images), -1).astype(np.float32)
        if self.centre:
            vectors -= vectors.mean(axis=1, keepdims=True)
        return vectors


class HSVHistogramEmbedder(Embedder):
    """Quantised HSV colour histogram (paper 000's colour feature), global plus optional grid.

    Each image is stretched to ``work_size`` x ``work_size`` (a histogram hardly depends on the
    pixel count, and one fixed size lets a single ``bincount`` serve the whole batch), converted
    to HSV by Pillow (every channel 0..255, hue 0..255 for 0..360 degrees) and each pixel is
    counted in one of ``h x s x v`` uniform bins. Paper 000 names HSV and a global histogram but
    no bin counts; the default 16 x 4 x 4 = 256 bins was chosen by P@10 on the products
    (20k-train gallery, 2k test queries): article_type 0.38 / base_colour 0.53, against 0.37 /
    0.50 for the classic 8 x 3 x 3 = 72 bins. ``grid=2`` appends one histogram per cell of a
    2 x 2 grid (colour layout: 0.44 / 0.53 at 16 x 4 x 4, dim 1,280).

    Every histogram is normalised to sum 1 and square-rooted (``sqrt=True``), so the cosine of
    two rows is the Bhattacharyya coefficient of the histograms (+0.05 P@10 over plain counts).
    ``ignore_background=True`` leaves out the white studio backdrop (palest saturation and
    brightest value bin); it is off by default because it *lowers* P@10 (0.29 / 0.43 at 8 x 3 x
    3): how much backdrop surrounds the product says something about its shape.
    """

    kind = "hsv-histogram"
    batch_size = 512

    def __init__(self, bins: tuple[int, int, int] | list[int] = (16, 4, 4), grid: int = 0,
                 work_size: int = 64, ignore_background: bool = False, sqrt: bool = True) -> None:
        if isinstance(bins, str):  # "16,4,4" from a command line
            bins = bins.split(",")
        bins = tuple(whole_number("hsv-histogram bins", b) for b in bins)
        if len(bins) != 3 or not all(1 <= b <= 256 for b in bins):
            raise LookalikeError(f"hsv-histogram: bins must be three integers in 1..256, "
                                 f"not {bins}")
        grid, work_size = whole_number("grid", grid), whole_number("work_size", work_size)
        if not 0 <= grid <= 8:
            raise LookalikeError(f"hsv-histogram: grid must be 0 (global only) .. 8, not {grid}")
        if not 8 <= work_size <= 512 or (grid and work_size % grid):
            raise LookalikeError(f"hsv-histogram: work_size {work_size} must be 8..512 and a "
                                 f"multiple of grid {grid}")
        self.bins: tuple[int, int, int] = bins  # type: ignore[assignment]
        self.grid = int(grid)
        self.work_size = int(work_size)
        self.ignore_background = bool(ignore_background)
        self.sqrt = bool(sqrt)

    @property
    def bins_per_histogram(self) -> int:
        return self.bins[0] * self.bins[1] * self.bins[2]

    @property
    def dim(self) -> int:
        return (1 + self.grid * self.grid) * self.bins_per_histogram

    def config(self) -> dict[str, Any]:
        return {"bins": list(self.bins), "grid": self.grid, "work_size": self.work_size,
                "ignore_background": self.ignore_background, "sqrt": self.sqrt}

    def bin_of(self, hsv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bin index (0 .. h*s*v-1) of uint8 HSV pixels ``[..., 3]``, and the background mask
        (palest saturation bin and brightest value bin: the white studio backdrop)."""
        hb, sb, vb = self.bins
        hsv = hsv.astype(np.int32)
        h = hsv[..., 0] * hb >> 8
        s = hsv[..., 1] * sb >> 8
        v = hsv[..., 2] * vb >> 8
        return (h * sb + s) * vb + v, (s == 0) & (v == vb - 1)

    def _histograms(self, index: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """``[n, nbins]`` counts of the kept pixels of ``index`` ``[n, pixels]``, in one bincount
        for the whole batch (every image's bins are offset by its row)."""
        n, nbins = index.shape[0], self.bins_per_histogram
        flat = (index + (np.arange(n) * nbins)[:, None])[keep]
        return np.bincount(flat, minlength=n * nbins).reshape(n, nbins).astype(np.float32)

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        n, size = len(images), self.work_size
        index, background = self.bin_of(images_to_grid(images, size, size, "HSV"))
        regions = [(index.reshape(n, -1), background.reshape(n, -1))]
        if self.grid:
            cell, g = size // self.grid, self.grid

            def cells(a: np.ndarray) -> np.ndarray:  # [g*g, n, cell*cell]
                a = a.reshape(n, g, cell, g, cell).transpose(1, 3, 0, 2, 4)
                return a.reshape(g * g, n, cell * cell)

            regions += list(zip(cells(index), cells(background)))
        hists = []
        for region, back in regions:
            everything = np.ones_like(back)
            counts = self._histograms(region, ~back if self.ignore_background else everything)
            if self.ignore_background:
                # A region that is all backdrop (a white shirt on white) keeps its backdrop bins
                # rather than becoming an empty, undefined histogram.
                empty = counts.sum(axis=1) == 0
                if empty.any():
                    counts[empty] = self._histograms(region[empty], everything[empty])
            hists.append(counts)
        hist = np.stack(hists, axis=1)  # [n, regions, nbins]
        hist /= np.maximum(hist.sum(axis=2, keepdims=True), 1.0)
        if self.sqrt:
            np.sqrt(hist, out=hist)
        return hist.reshape(n, -1)
