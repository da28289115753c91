"""Is this pair of photos the same photo (a copy), or two similar products?

A reseller's copy is the original cropped a little, resized, brightened and re-saved at low JPEG
quality. Candidate pairs (from hashes and embeddings) are checked here by aligning the two
photos' small thumbnails densely -- product photos are 60 x 80 px, too small for keypoints
(ORB finds few, and its matches do not separate copies from look-alikes) -- and comparing what is
left:

1. *Alignment*: a Gauss-Newton (Lucas-Kanade) fit of an axis-aligned scale and shift plus a
   gain of the grey levels, batched over many pairs with ``torch.grid_sample``.
   A crop-and-resize is exactly such a warp; brightness is the gain.
2. *Texture*: the normalised cross-correlation of band-passed (difference of Gaussians) grey
   levels of the aligned pair, over the pixels both photos show. A copy keeps the fine detail
   of its original (seams, prints, logos); a look-alike product shot the same way does not.
3. *Colour*: the mean CIELAB Delta-E of the aligned pair (lightness after the fitted gain)
   over the product's pixels (those unlike the photo's border colour), which the band-passed grey
   levels cannot see (the same shirt in another colour).

:func:`score_pairs` gives both numbers per pair; a pair is a copy when its texture is at least
``min_texture`` and its colour difference at most ``max_colour`` (:func:`is_copy`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lookalike.threads import torch_threads

#: Thumbnail size (width, height): half the catalogue's 60 x 80 photos.
THUMB_SIZE = (30, 40)
#: Defaults chosen on validation copies of train products with benchmarks/dedup_bench.py.
MIN_TEXTURE = 0.94
MAX_COLOUR = 8.0
_ITERATIONS = 8
_FEW_PAIRS = 32
_SMOOTH, _FINE, _COARSE = 0.8, 0.7, 2.0
_COLOUR_BLUR = 1.2  # colour is compared on blurred photos: JPEG and resampling blur edges
_BACKGROUND_DELTA_E = 8.0  # how far from the border colour a pixel of the product is


def thumbnail(image: Image.Image) -> np.ndarray:
    """The photo as ``[3, H, W]`` uint8: CIELAB lightness (scaled to 0..255), a* and b* (+128)."""
    from skimage.color import rgb2lab

    small = image.convert("RGB").resize(THUMB_SIZE, Image.Resampling.BILINEAR)
    lab = rgb2lab(np.asarray(small, dtype=np.float32) / 255.0)
    lab[..., 0] *= 2.55
    lab[..., 1:] += 128.0
    return np.clip(np.rint(lab), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def thumbnails(images) -> np.ndarray:
    """:func:`thumbnail` of many images, ``[n, 3, H, W]`` uint8."""
    out = [thumbnail(image) for image in images]
    return np.stack(out) if out else np.zeros((0, 3, THUMB_SIZE[1], THUMB_SIZE[0]), np.uint8)


@dataclass
class PairScores:
    """Per pair: ``texture`` (band-passed NCC after alignment, higher = more alike), ``colour``
    (mean Delta-E after alignment, lower = more alike) and the fitted ``scale``."""

    texture: np.ndarray
    colour: np.ndarray
    scale: np.ndarray

    def __len__(self) -> int:
        return len(self.texture)


def is_copy(scores: PairScores, min_texture: float = MIN_TEXTURE,
            max_colour: float = MAX_COLOUR) -> np.ndarray:
    """Boolean per pair: the same photo (see the module docstring)."""
    return (scores.texture >= min_texture) & (scores.colour <= max_colour)


def score_pairs(first: np.ndarray, second: np.ndarray, *, batch: int = 128) -> PairScores:
    """:class:`PairScores` of thumbnail pairs ``first[k]`` / ``second[k]`` (``[n, 3, H, W]``
    uint8 each, from :func:`thumbnails`)."""
    return scores_in_batches(_score_batch, first, second, batch=batch, few=_FEW_PAIRS)


def scores_in_batches(score_batch: Callable[[np.ndarray, np.ndarray], PairScores],
                      first: np.ndarray, second: np.ndarray, *, batch: int,
                      few: int) -> PairScores:
    """``score_batch`` over the pairs ``first[k]`` / ``second[k]``, ``batch`` pairs at a time;
    ``few`` pairs or fewer run on one thread (hundreds of tiny ops: threads only wait)."""
    if len(first) != len(second):
        raise ValueError("scoring pairs needs as many first as second thumbnails")
    with torch_threads(1 if len(first) <= few else None):
        parts = [score_batch(first[s:s + batch], second[s:s + batch])
                 for s in range(0, len(first), batch)]
    if not parts:
        empty = np.zeros(0, dtype=np.float32)
        return PairScores(empty, empty, np.zeros((0, 2), dtype=np.float32))
    return PairScores(*(np.concatenate([getattr(p, name) for p in parts])
                        for name in ("texture", "colour", "scale")))


@functools.lru_cache(maxsize=64)
def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` matrix of a 1-D Gaussian blur with replicated borders: ``M @ v`` blurs ``v``
    (read-only; the same few sizes recur, so they are kept)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-t * t / (2 * sigma * sigma))
    kernel /= kernel.sum()
    rows = np.repeat(np.arange(n), len(t))
    cols = np.clip(np.arange(n)[:, None] + t.astype(np.int64)[None], 0, n - 1).reshape(-1)
    matrix = np.zeros((n, n), dtype=np.float64)
    np.add.at(matrix, (rows, cols), np.tile(kernel, n))
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def gauss(x, sigma: float):
    """Gaussian blur of ``[B, C, H, W]`` (separable, replicated borders), as two small matrix
    products (on thumbnails far quicker than convolutions)."""
    import torch

    h, w = x.shape[-2:]
    rows = torch.tensor(blur_matrix(h, sigma))
    cols = torch.tensor(blur_matrix(w, sigma).T)
    return rows @ x @ cols


def gauss_channels(x, sigma: float):
    """:func:`gauss` of every channel of ``[B, C, H, W]`` (the same as :func:`gauss`)."""
    return gauss(x, sigma)


def _warp(image, params, xn, yn, with_mask: bool = False):
    """``image`` ``[B, C, H, W]`` sampled at ``(sx * x + tx, sy * y + ty)`` (normalised coords),
    and with ``with_mask`` which samples fall inside the image."""
    import torch
    import torch.nn.functional as F

    grid = torch.stack([params[:, 0, None, None] * xn + params[:, 2, None, None],
                        params[:, 1, None, None] * yn + params[:, 3, None, None]], -1)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border",
                           align_corners=True)
    return warped, ((grid.abs() <= 1.0).all(-1) if with_mask else None)


def align(template, image, iterations: int = _ITERATIONS):
    """Parameters ``[B, 5]`` = (sx, sy, tx, ty, gain) such that
    ``gain * image(sx * x + tx, sy * y + ty)`` matches ``template`` (both ``[B, 1, H, W]``
    grey levels in 0..1, normalised coordinates), by damped Gauss-Newton on blurred images."""
    import torch

    b, _, h, w = template.shape
    target, source = gauss(template, _SMOOTH)[:, 0], gauss(image, _SMOOTH)
    yn, xn = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    params = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]).repeat(b, 1)
    for _ in range(iterations):
        warped = _warp(source, params, xn, yn)[0][:, 0]
        gx, gy = torch.zeros_like(warped), torch.zeros_like(warped)
        gx[:, :, 1:-1] = (warped[:, :, 2:] - warped[:, :, :-2]) / 2
        gy[:, 1:-1] = (warped[:, 2:] - warped[:, :-2]) / 2
        gain = params[:, 4, None, None]
        gx = gain * gx * (w - 1) / 2 / params[:, 0, None, None]
        gy = gain * gy * (h - 1) / 2 / params[:, 1, None, None]
        jac = torch.stack([gx * xn, gy * yn, gx, gy, warped], 1).reshape(b, 5, -1)
        residual = (target - gain * warped).reshape(b, -1, 1)
        normal = jac @ jac.transpose(1, 2)
        normal = normal + torch.diag_embed(0.01 * torch.diagonal(normal, dim1=1, dim2=2) + 1e-3)
        step = torch.linalg.solve(normal, jac @ residual)[..., 0]
        params = params + step
        params[:, 0:2].clamp_(0.7, 1.4)
        params[:, 2:4].clamp_(-0.3, 0.3)
        params[:, 4].clamp_(0.5, 2.0)
        if float(step[:, :4].abs().max()) < 1e-3:
            break  # every pair of the batch has settled
    return params, (xn, yn)


def masked_ncc(a, b, mask):
    """Normalised cross-correlation of ``[B, H, W]`` images over ``mask``'s pixels."""
    n = mask.sum((1, 2)).clamp(min=1.0)[:, None, None]
    a = (a - (a * mask).sum((1, 2))[:, None, None] / n) * mask
    b = (b - (b * mask).sum((1, 2))[:, None, None] / n) * mask
    return (a * b).sum((1, 2)) / ((a * a).sum((1, 2)) * (b * b).sum((1, 2)) + 1e-12).sqrt()


def foreground(lab):
    """``[B, H, W]`` 1.0 where a pixel differs from the photo's background (the median colour of
    its border) by more than ``_BACKGROUND_DELTA_E``."""
    import torch

    border = torch.cat([lab[:, :, 0], lab[:, :, -1], lab[:, :, :, 0], lab[:, :, :, -1]], 2)
    background = border.median(dim=2).values[:, :, None, None]
    scale = torch.tensor([1 / 2.55, 1.0, 1.0]).view(1, 3, 1, 1)
    distance = (((lab - background) * scale) ** 2).sum(1).sqrt()
    return (distance > _BACKGROUND_DELTA_E).float()


def _score_batch(first: np.ndarray, second: np.ndarray) -> PairScores:
    import torch

    with torch.no_grad():
        a = torch.from_numpy(np.ascontiguousarray(first)).float()
        b = torch.from_numpy(np.ascontiguousarray(second)).float()
        grey_a, grey_b = a[:, :1] / 255.0, b[:, :1] / 255.0
        params, (xn, yn) = align(grey_a, grey_b)
        band_a = gauss(grey_a, _FINE) - gauss(grey_a, _COARSE)
        band_b = gauss(grey_b, _FINE) - gauss(grey_b, _COARSE)
        soft_a, soft_b = gauss_channels(a, _COLOUR_BLUR), gauss_channels(b, _COLOUR_BLUR)
        moved, valid = _warp(torch.cat([band_b, soft_b], 1), params, xn, yn, with_mask=True)
        valid = valid.float()
        texture = masked_ncc(band_a[:, 0], moved[:, 0], valid)
        lightness = (soft_a[:, 0] - params[:, 4, None, None] * moved[:, 1]) / 2.55
        chroma = torch.sqrt(lightness ** 2 + ((soft_a[:, 1:] - moved[:, 2:]) ** 2).sum(1))
        product = valid * foreground(a)
        enough = product.sum((1, 2)) >= 0.05 * valid.sum((1, 2)).clamp(min=1.0)
        weight = torch.where(enough[:, None, None], product, valid)
        colour = (chroma * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1.0)
    return PairScores(texture.numpy().astype(np.float32), colour.numpy().astype(np.float32),
                      params[:, :2].numpy().astype(np.float32))


__all__ = ["THUMB_SIZE", "MIN_TEXTURE", "MAX_COLOUR", "thumbnail", "thumbnails", "PairScores",
           "is_copy", "score_pairs", "align", "gauss", "gauss_channels", "masked_ncc",
           "foreground"]
