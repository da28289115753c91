"""Is this shopper's photo a photo of that catalogue product? An affine check for search by photo.

A shopper's photo of a catalogue product is the catalogue photo cropped (85-95 %), turned a few
degrees, padded on a grey background, brighter or darker and re-saved at a low JPEG quality.
The embedding of such a photo moves, and look-alike products of the same type can overtake the
product itself. The copies verifier (:mod:`.copy_verify`) fits only an axis-aligned scale and
shift; here the fit is a full affine map (scale, rotation, shear, shift) plus a gain, coarse to
fine, so a turned and re-framed photo lines up with its original:

1. *Alignment*: Gauss-Newton on the grey levels, first on strongly blurred thumbnails (to find
   the rough frame), then on lightly blurred ones, batched over pairs with
   ``torch.grid_sample``; the source image's gradients are warped with it (exact Jacobian).
2. *Texture*: the normalised cross-correlation of band-passed grey levels over the pixels both
   photos show (as in the copies verifier).
3. *Colour*: the mean CIELAB Delta-E over the product's pixels after the fitted gain.

:func:`match_scores` scores one query photo against many candidate photos. The candidates are
the nearest products by embedding of the photo framed again like a catalogue photo
(:mod:`.photo_frame`: straightened, without its grey frame, and that with a white margin).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.index.base import Filters
from lookalike.recommend.results import Recommendation
from lookalike.catalogue.copy_verify import (PairScores, foreground, gauss, gauss_channels,
                                             masked_ncc, scores_in_batches)
from lookalike.recommend.photo_frame import MARGIN, query_views, trim_border

#: Thumbnail size (width, height) the match is computed at: the catalogue's 60 x 80 photos.
MATCH_SIZE = (60, 80)
#: (blur sigma, iterations) of the coarse-to-fine alignment.
_SCHEDULE = ((2.0, 4), (0.8, 3))
_FINE, _COARSE = 0.9, 2.5
_COLOUR_BLUR = 1.5


def match_thumbnail(image: Image.Image, size: tuple[int, int] = MATCH_SIZE) -> np.ndarray:
    """The photo as ``[3, H, W]`` uint8 CIELAB (lightness scaled to 0..255, a* and b* + 128)."""
    from skimage.color import rgb2lab

    small = image.convert("RGB").resize(size, Image.Resampling.BOX
                                        if image.width >= size[0] else Image.Resampling.BILINEAR)
    lab = rgb2lab(np.asarray(small, dtype=np.float32) / 255.0)
    lab[..., 0] *= 2.55
    lab[..., 1:] += 128.0
    return np.clip(np.rint(lab), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def match_thumbnails(images: Sequence[Image.Image],
                     size: tuple[int, int] = MATCH_SIZE) -> np.ndarray:
    """:func:`match_thumbnail` of many images, ``[n, 3, H, W]`` uint8."""
    out = [match_thumbnail(image, size) for image in images]
    return np.stack(out) if out else np.zeros((0, 3, size[1], size[0]), np.uint8)


def _grid(params, xn, yn):
    """Sampling grid ``[B, H, W, 2]`` of the affine ``params`` ``[B, 7]``
    (a11, a12, a21, a22, tx, ty, gain) over normalised coordinates."""
    import torch

    p = params[:, :, None, None]
    return torch.stack([p[:, 0] * xn + p[:, 1] * yn + p[:, 4],
                        p[:, 2] * xn + p[:, 3] * yn + p[:, 5]], -1)


def _gradients(image, h: int, w: int):
    """Central differences of ``[B, 1, H, W]`` in normalised coordinates (``[B, 2, H, W]``)."""
    import torch

    gx, gy = torch.zeros_like(image), torch.zeros_like(image)
    gx[..., 1:-1] = (image[..., 2:] - image[..., :-2]) / 2 * (w - 1) / 2
    gy[..., 1:-1, :] = (image[..., 2:, :] - image[..., :-2, :]) / 2 * (h - 1) / 2
    return torch.cat([gx, gy], 1)


def product_mask(lab, grow: float = 2.0):
    """``[B, H, W]`` weights: the product's pixels of ``[B, 3, H, W]`` CIELAB thumbnails
    (:func:`~.copy_verify.foreground`), grown by a blur of ``grow`` pixels; the whole photo when
    the product is too small to tell apart from its background."""
    import torch

    fore = foreground(lab)
    grown = (gauss(fore[:, None], grow)[:, 0] > 0.05).float()
    enough = grown.mean((1, 2)) >= 0.05
    return torch.where(enough[:, None, None], grown, torch.ones_like(grown))


def affine_align(template, image, weight=None):
    """Parameters ``[B, 7]`` = (a11, a12, a21, a22, tx, ty, gain) such that
    ``gain * image(A @ (x, y) + t)`` matches ``template`` (``[B, 1, H, W]`` grey levels in 0..1,
    normalised coordinates) over the pixels ``weight`` (``[B, H, W]``, default all), by damped
    Gauss-Newton from coarse to fine blur."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = template.shape
    yn, xn = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    params = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]).repeat(b, 1)
    weight = torch.ones(b, h * w) if weight is None else weight.reshape(b, h * w)
    for sigma, iterations in _SCHEDULE:
        target = gauss(template, sigma)[:, 0]
        source = gauss(image, sigma)
        stack = torch.cat([source, _gradients(source, h, w)], 1)
        for _ in range(iterations):
            sampled = F.grid_sample(stack, _grid(params, xn, yn), mode="bilinear",
                                    padding_mode="border", align_corners=True)
            warped, gx, gy = sampled[:, 0], sampled[:, 1], sampled[:, 2]
            gain = params[:, 6, None, None]
            gx, gy = gain * gx, gain * gy
            jac = torch.stack([gx * xn, gx * yn, gy * xn, gy * yn, gx, gy, warped],
                              1).reshape(b, 7, -1)
            residual = (target - gain * warped).reshape(b, -1, 1)
            weighted = jac * weight[:, None]
            normal = weighted @ jac.transpose(1, 2)
            normal = normal + torch.diag_embed(
                0.05 * torch.diagonal(normal, dim1=1, dim2=2) + 1e-3)
            step = torch.linalg.solve(normal, weighted @ residual)[..., 0]
            params = params + step
            params[:, (0, 3)] = params[:, (0, 3)].clamp(0.6, 1.6)
            params[:, (1, 2)] = params[:, (1, 2)].clamp(-0.3, 0.3)
            params[:, 4:6] = params[:, 4:6].clamp(-0.4, 0.4)
            params[:, 6] = params[:, 6].clamp(0.5, 2.0)
            if float(step[:, :6].abs().max()) < 1e-3:
                break
    return params, (xn, yn)


def score_matches(first: np.ndarray, second: np.ndarray, *, batch: int = 64) -> PairScores:
    """Texture and colour agreement of thumbnail pairs ``first[k]`` (the catalogue photo) /
    ``second[k]`` (the query photo), both ``[n, 3, H, W]`` uint8 from
    :func:`match_thumbnails`; ``scale`` is the fitted (a11, a22)."""
    return scores_in_batches(_score_batch, first, second, batch=batch, few=8)


def _score_batch(first: np.ndarray, second: np.ndarray) -> PairScores:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        a = torch.from_numpy(np.ascontiguousarray(first)).float()
        b = torch.from_numpy(np.ascontiguousarray(second)).float()
        grey_a, grey_b = a[:, :1] / 255.0, b[:, :1] / 255.0
        product = product_mask(a)
        params, (xn, yn) = affine_align(grey_a, grey_b, product)
        band_a = gauss(grey_a, _FINE) - gauss(grey_a, _COARSE)
        band_b = gauss(grey_b, _FINE) - gauss(grey_b, _COARSE)
        soft_a, soft_b = gauss_channels(a, _COLOUR_BLUR), gauss_channels(b, _COLOUR_BLUR)
        grid = _grid(params, xn, yn)
        moved = F.grid_sample(torch.cat([band_b, soft_b], 1), grid, mode="bilinear",
                              padding_mode="border", align_corners=True)
        valid = (grid.abs() <= 1.0).all(-1).float()
        texture = masked_ncc(band_a[:, 0], moved[:, 0], valid * product)
        lightness = (soft_a[:, 0] - params[:, 6, None, None] * moved[:, 1]) / 2.55
        chroma = torch.sqrt(lightness ** 2 + ((soft_a[:, 1:] - moved[:, 2:]) ** 2).sum(1))
        inside = valid * foreground(a)
        enough = inside.sum((1, 2)) >= 0.05 * valid.sum((1, 2)).clamp(min=1.0)
        weight = torch.where(enough[:, None, None], inside, valid)
        colour = (chroma * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1.0)
    return PairScores(texture.numpy().astype(np.float32), colour.numpy().astype(np.float32),
                      params[:, (0, 3)].numpy().astype(np.float32))


@dataclass(frozen=True)
class MatchSettings:
    """How search by photo re-ranks: the ``depth`` nearest embeddings are checked, and those
    whose :func:`match_score` (texture minus colour / ``COLOUR_SCALE``) is at least
    ``min_score`` come first (best score first); the others keep their embedding order.
    Defaults chosen on validation queries by benchmarks/photo_robust_bench.py."""

    depth: int = 30
    min_score: float = 0.4
    margin: float = MARGIN  # the white margin of the second query view (0: one view)

    def check(self) -> "MatchSettings":
        if self.depth < 1:
            raise LookalikeError(f"the exact-match depth must be at least 1, not {self.depth}")
        if not 0.0 <= self.margin <= 0.5:
            raise LookalikeError(f"the exact-match margin is a share of a side in [0, 0.5], "
                                 f"not {self.margin}")
        return self


#: Delta-E units that cost as much as 1.0 of texture correlation in :func:`match_score`.
COLOUR_SCALE = 40.0


def match_score(scores: PairScores) -> np.ndarray:
    """One number per pair, higher = more surely the same product photo."""
    return scores.texture - scores.colour / COLOUR_SCALE


def match_scores(query: Image.Image, candidates: Sequence[Image.Image]) -> PairScores:
    """:class:`PairScores` of one query photo against each candidate photo."""
    thumbs = match_thumbnails(candidates)
    mine = np.repeat(match_thumbnail(query)[None], len(thumbs), axis=0)
    return score_matches(thumbs, mine)


def rerank(values: np.ndarray, min_score: float) -> list[int]:
    """Positions in their new order, given each candidate's :func:`match_score`: those at
    least ``min_score`` first (best first), then the rest in their old order."""
    ok = np.asarray(values) >= min_score
    matched = sorted(np.flatnonzero(ok).tolist(), key=lambda n: (-float(values[n]), n))
    return matched + [n for n in range(len(values)) if not ok[n]]


def candidate_matches(project, image: Any, depth: int, filters: Filters | None = None, *,
                      index: str | None = None, exclude: Iterable[str] = (),
                      margin: float = MARGIN
                      ) -> tuple[list[Recommendation], np.ndarray, np.ndarray]:
    """The ``depth`` nearest products (``project.search``) of each view of a photo
    (:func:`~.photo_frame.query_views`: straightened and without its plain frame, and that with
    a white ``margin``), each one's :func:`match_score` against the photo and its best rank in
    any list. The first view's list comes first, in its order, then the products only the other
    view found."""
    from lookalike.catalogue.images import as_image

    photo = as_image(image)
    exclude = list(exclude)
    found: list[Recommendation] = []
    ranks: dict[str, int] = {}
    for view in query_views(photo, margin):
        for n, rec in enumerate(project.search(view, depth, filters, index=index,
                                               exclude=exclude)):
            if rec.id not in ranks:
                found.append(rec)
            ranks[rec.id] = min(ranks.get(rec.id, n), n)
    values = _match_values(project, photo, found)
    return found, values, np.array([ranks[r.id] for r in found], dtype=np.int64)


def _match_values(project, photo: Image.Image, found: Sequence[Recommendation]) -> np.ndarray:
    """:func:`match_score` of each found product's catalogue photo against ``photo`` (-inf for
    an image gone or damaged since indexing: it keeps its place)."""
    from lookalike.catalogue.images import decode_image

    items = project.store.find([r.id for r in found])
    thumbs: dict[int, np.ndarray] = {}
    for n, rec in enumerate(found):
        item = items.get(rec.id)
        try:
            if item is not None:
                thumbs[n] = match_thumbnail(decode_image(item.image_path, source=rec.id))
        except LookalikeError:
            continue
    values = np.full(len(found), -np.inf, dtype=np.float32)
    if thumbs:
        rows = sorted(thumbs)
        mine = np.repeat(match_thumbnail(photo)[None], len(rows), axis=0)
        values[rows] = match_score(score_matches(np.stack([thumbs[n] for n in rows]), mine))
    return values


def search_exact(project, image: Any, k: int = 5, filters: Filters | None = None, *,
                 index: str | None = None, exclude: Iterable[str] = (),
                 settings: MatchSettings = MatchSettings()) -> list[Recommendation]:
    """Search by photo for *this exact product*: the ``settings.depth`` nearest products by
    embedding, re-ranked so those whose photo lines up with the query photo come first."""
    settings.check()
    found, values, _ = candidate_matches(project, image, max(settings.depth, k), filters,
                                         index=index, exclude=exclude, margin=settings.margin)
    return [found[n] for n in rerank(values, settings.min_score)][:k]


__all__ = ["MATCH_SIZE", "MatchSettings", "COLOUR_SCALE", "match_thumbnail", "match_thumbnails",
           "affine_align", "product_mask", "score_matches", "match_score", "match_scores",
           "rerank", "trim_border", "candidate_matches", "search_exact"]
