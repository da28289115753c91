"""The edits a reseller's copy of a product photo goes through, alone or combined.

A re-upload is seldom changed one way: it is cropped a few pixels, resized, slightly brightened
and re-saved at a low JPEG quality, all at once. :func:`edit_copy` applies a chosen list of
edits with given strengths; :func:`random_edits` draws ``n`` distinct edits with random strengths
(seeded), which is how the benchmark and the tests build copies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from lookalike.errors import LookalikeError

#: The edits, each with the range its strength is drawn from.
EDIT_KINDS = ("crop", "resize", "brightness", "jpeg")
#: crop: fraction cut from each side (drawn per side); resize: scale factor; brightness: factor;
#: jpeg: quality.
STRENGTHS = {"crop": (0.02, 0.07), "resize": (0.5, 1.6), "brightness": (0.8, 1.2),
             "jpeg": (25, 60)}


@dataclass(frozen=True)
class Edit:
    """One edit: ``kind`` (one of :data:`EDIT_KINDS`) and its strength(s)."""

    kind: str
    amount: tuple[float, ...]

    def label(self) -> str:
        if self.kind == "crop":
            return f"crop-{max(self.amount):.0%}"
        if self.kind == "jpeg":
            return f"jpeg-q{int(self.amount[0])}"
        return f"{self.kind}-x{self.amount[0]:.2f}"


def random_edits(rng: np.random.Generator, n: int) -> list[Edit]:
    """``n`` distinct edits (1 to 4) in a random order of kinds, with random strengths."""
    if not 1 <= n <= len(EDIT_KINDS):
        raise LookalikeError(f"a copy takes 1 to {len(EDIT_KINDS)} edits, not {n}")
    kinds = [EDIT_KINDS[k] for k in sorted(rng.choice(len(EDIT_KINDS), size=n, replace=False))]
    edits = []
    for kind in kinds:
        low, high = STRENGTHS[kind]
        if kind == "crop":
            edits.append(Edit(kind, tuple(float(v) for v in rng.uniform(low, high, size=4))))
        elif kind == "resize":  # never within 10 % of the original size: a visible change
            factor = float(rng.uniform(low, high))
            edits.append(Edit(kind, (factor if abs(factor - 1) > 0.1 else factor + 0.2,)))
        elif kind == "jpeg":
            edits.append(Edit(kind, (float(int(rng.integers(low, high + 1))),)))
        else:
            factor = float(rng.uniform(low, high))
            edits.append(Edit(kind, (factor if abs(factor - 1) > 0.05 else factor * 1.1,)))
    return edits


def edit_copy(image: Image.Image, edits: list[Edit]) -> Image.Image:
    """``image`` after ``edits`` (crop, resize and brightness in that order), re-saved as JPEG
    (at the ``jpeg`` edit's quality, else 90) and decoded again, as a shop would serve it."""
    image = image.convert("RGB")
    quality = 90
    by_kind = {edit.kind: edit for edit in edits}
    if "crop" in by_kind:
        left, top, right, bottom = by_kind["crop"].amount
        w, h = image.size
        box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
        image = image.crop(box)
    if "resize" in by_kind:
        factor = by_kind["resize"].amount[0]
        w, h = image.size
        image = image.resize((max(8, round(w * factor)), max(8, round(h * factor))),
                             Image.Resampling.LANCZOS)
    if "brightness" in by_kind:
        image = ImageEnhance.Brightness(image).enhance(by_kind["brightness"].amount[0])
    if "jpeg" in by_kind:
        quality = int(by_kind["jpeg"].amount[0])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


#: A shopper's photo of a product: the part of the photo kept (per side), the turn in degrees,
#: the grey border added (fraction of the side), the brightness factor, the JPEG quality and the
#: upscaling of a phone photo.
SHOPPER = {"keep": (0.85, 0.95), "degrees": (2.0, 5.0), "pad": (0.04, 0.12),
           "brightness": (0.8, 1.2), "jpeg": 40, "upscale": (1.0, 3.0)}


def shopper_photo(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """``image`` as a shopper would photograph it (every edit of :data:`SHOPPER` at once, with
    random strengths): cropped, padded on grey, turned a few degrees either way, brightened or
    darkened, upscaled and re-saved at JPEG quality 40; returns the photo and its edits."""
    image = image.convert("RGB")
    w, h = image.size
    keep = rng.uniform(*SHOPPER["keep"], size=2)
    left, top = rng.uniform(0, 1 - keep[0]) * w, rng.uniform(0, 1 - keep[1]) * h
    image = image.crop((round(left), round(top), round(left + keep[0] * w),
                        round(top + keep[1] * h)))
    grey = int(rng.integers(110, 181))
    pad = rng.uniform(*SHOPPER["pad"])
    cw, ch = image.size
    dx, dy = round(pad * cw), round(pad * ch)
    canvas = Image.new("RGB", (cw + 2 * dx, ch + 2 * dy), (grey, grey, grey))
    canvas.paste(image, (dx, dy))
    degrees = float(rng.uniform(*SHOPPER["degrees"]) * rng.choice([-1, 1]))
    scale = float(rng.uniform(*SHOPPER["upscale"]))
    canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)),
                           Image.Resampling.BICUBIC)
    canvas = canvas.rotate(degrees, resample=Image.Resampling.BILINEAR,
                           fillcolor=(grey, grey, grey))
    factor = float(rng.uniform(*SHOPPER["brightness"]))
    canvas = ImageEnhance.Brightness(canvas).enhance(factor)
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=SHOPPER["jpeg"])
    edits = {"keep": [round(float(v), 3) for v in keep], "pad": round(float(pad), 3),
             "grey": grey, "degrees": round(degrees, 2), "brightness": round(factor, 3),
             "upscale": round(scale, 2), "jpeg": SHOPPER["jpeg"]}
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), edits


def label(edits: list[Edit]) -> str:
    """A short name of a copy's edits, e.g. ``crop+jpeg``."""
    return "+".join(edit.kind for edit in edits)


__all__ = ["EDIT_KINDS", "STRENGTHS", "Edit", "random_edits", "edit_copy", "label", "SHOPPER",
           "shopper_photo"]
