"""Generated shop-the-look scenes drawn from a wide, written-down distribution, split three ways.

Each scene is a background (:mod:`lookalike.recommend.scene_backgrounds`: photos and procedural
textures, each belonging to one split) with real catalogue photos placed on it. What varies
(:class:`SceneSpec`, every range below is its default):

- **products**: 1-6 per scene (5 in ``like`` scenes: the target and 4 of other article types),
  longer side uniform in ``side_range`` (40-220 px on a 640 x 480 scene), aspect stretched by up
  to +-15 %, rotated by up to +-12 degrees in 30 % of cases, a colour cast of up to +-10 % per
  channel and +-15 % brightness, a Gaussian blur of up to 1.5 px in 30 % of cases;
- **cut-outs and pasted photos mixed**: each product is cut out of its white studio backdrop
  (:func:`~lookalike.recommend.scenes.product_mask`, soft edges) with probability
  ``cutout_share`` (0.5), else pasted whole, white rectangle included; a scene can be forced to
  all-cut-out or all-pasted (the benchmark's two modes);
- **overlap**: 40 % of products may cover up to 30 % of the box of products placed before them
  (occlusion); the others keep a 4 px gap;
- **clutter**: in half the scenes 1-4 shapes that are not products (discs, polygons, plain
  light rectangles) are drawn first;
- **the whole photo** is saved as JPEG at quality 60-95 and read back.

Splits: a background is in one split (:func:`~lookalike.recommend.scene_backgrounds.split_of`);
products too (:func:`product_split`): the catalogue's test split is ``test``; its train split is
dealt by a seeded hash into ``train`` (90 %) and ``validation`` (10 %). A generator of one split
draws only that split's backgrounds and products, so train, validation and test scenes share
neither. The truth of each product is its full box (before occlusion) and its visible pixels.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lookalike.errors import LookalikeError
from lookalike.recommend.scene_backgrounds import SPLIT_SEED, SPLITS, Backgrounds
from lookalike.recommend.scenes import PlacedProduct, Scene, decode_jpeg, product_mask

#: Share of the catalogue's train split dealt to the validation split.
VALIDATION_PRODUCTS = 0.1


class SceneGenerationError(LookalikeError):
    """A scene that cannot be generated (no products in the split, nothing fits)."""


def product_split(item_id: str, catalogue_split: str, seed: int = SPLIT_SEED) -> str:
    """``test`` for the catalogue's test products; a train product is ``validation`` when a
    seeded SHA-256 of its id falls in the first :data:`VALIDATION_PRODUCTS`, else ``train``."""
    if catalogue_split == "test":
        return "test"
    digest = hashlib.sha256(f"{seed}:product:{item_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2 ** 64 < VALIDATION_PRODUCTS \
        else "train"


@dataclass
class SceneSpec:
    """The distribution scenes are drawn from (see the module's docstring)."""

    size: tuple[int, int] = (640, 480)
    products: tuple[int, int] = (1, 6)
    side_range: tuple[int, int] = (40, 220)
    aspect_jitter: float = 0.15
    rotate_share: float = 0.3
    max_rotation: float = 12.0
    cast: float = 0.10
    brightness: float = 0.15
    blur_share: float = 0.3
    max_blur: float = 1.5
    cutout_share: float = 0.5
    overlap_share: float = 0.4
    max_cover: float = 0.3
    clutter_share: float = 0.5
    jpeg_quality: tuple[int, int] = (60, 95)
    photo_share: float = 0.6

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass
class GeneratedScene(Scene):
    """A :class:`Scene` with each product's visible pixels: ``instances`` is int16 ``[H, W]``,
    0 on the background and ``i + 1`` where product ``i`` is seen."""

    instances: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int16))


def _jittered(photo: Image.Image, cutout: bool, side: int, spec: SceneSpec,
              rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """The photo as it will be placed (resized, stretched, rotated, cast, blurred) and its
    alpha ``[h, w]`` float in [0, 1]."""
    stretch = float(np.exp(rng.uniform(-spec.aspect_jitter, spec.aspect_jitter)))
    w0, h0 = photo.width * stretch, photo.height / stretch
    scale = side / max(w0, h0)
    size = (max(2, round(w0 * scale)), max(2, round(h0 * scale)))
    mask = product_mask(photo) if cutout else np.ones((photo.height, photo.width), bool)
    image = photo.convert("RGB").resize(size, Image.BILINEAR)
    alpha = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.BILINEAR)
    if rng.random() < spec.rotate_share:
        angle = float(rng.uniform(-spec.max_rotation, spec.max_rotation))
        image = image.rotate(angle, Image.BILINEAR, expand=True, fillcolor=(255, 255, 255))
        alpha = alpha.rotate(angle, Image.BILINEAR, expand=True, fillcolor=0)
    pixels = np.asarray(image, np.float32)
    gain = rng.uniform(1 - spec.cast, 1 + spec.cast, 3) * rng.uniform(1 - spec.brightness,
                                                                        1 + spec.brightness)
    image = Image.fromarray(np.clip(pixels * gain, 0, 255).astype(np.uint8))
    if rng.random() < spec.blur_share:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, spec.max_blur))))
    return image, np.asarray(alpha, np.float32) / 255.0


def _draw_clutter(canvas: Image.Image, rng: np.random.Generator) -> None:
    """1-4 shapes that are not products: discs, polygons, plain light rectangles."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):
        w, h = (int(v) for v in rng.integers(30, 200, size=2))
        x, y = int(rng.integers(0, canvas.width - w)), int(rng.integers(0, canvas.height - h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            points = [(x + float(rng.uniform(0, w)), y + float(rng.uniform(0, h)))
                      for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=colour)
        else:
            light = tuple(int(c) for c in rng.integers(225, 256, 3))
            draw.rectangle((x, y, x + w, y + h), fill=light)


def _place(box_size: tuple[int, int], placed: list[tuple[int, int, int, int]], overlap: bool,
           spec: SceneSpec, rng: np.random.Generator, tries: int = 300
           ) -> tuple[int, int] | None:
    width, height = spec.size
    w, h = box_size
    if w > width or h > height:
        return None
    for _ in range(tries):
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        ok = True
        for b in placed:
            ix = min(x0 + w, b[2]) - max(x0, b[0])
            iy = min(y0 + h, b[3]) - max(y0, b[1])
            if overlap:
                ok = ix <= 0 or iy <= 0 or ix * iy <= spec.max_cover * min(
                    w * h, (b[2] - b[0]) * (b[3] - b[1]))
            else:
                ok = ix <= -4 or iy <= -4
            if not ok:
                break
        if ok:
            return x0, y0
    return None


def compose(background: Image.Image, background_id: str,
            products: list[tuple[str, Image.Image, str]], spec: SceneSpec,
            rng: np.random.Generator, cutout: bool | None = None) -> GeneratedScene:
    """Place ``(item_id, photo, role)`` products on ``background`` as :class:`SceneSpec` says;
    ``cutout`` True / False forces every product's treatment (None: mixed)."""
    canvas = background.convert("RGB").resize(spec.size, Image.BILINEAR)
    if rng.random() < spec.clutter_share:
        _draw_clutter(canvas, rng)
    width, height = spec.size
    instances = np.zeros((height, width), np.int16)
    placed: list[PlacedProduct] = []
    for item_id, photo, role in products:
        low, high = spec.side_range
        cut = bool(rng.random() < spec.cutout_share) if cutout is None else cutout
        for _ in range(4):  # a smaller size when a big one does not fit
            image, alpha = _jittered(photo, cut, int(rng.integers(low, high + 1)), spec, rng)
            where = _place(image.size, [p.box for p in placed],
                           bool(rng.random() < spec.overlap_share), spec, rng)
            if where is not None:
                break
            high = max(low, (low + high) // 2)
        else:
            if role == "target":
                raise SceneGenerationError("could not place the target product")
            continue
        x0, y0 = where
        inside = alpha >= 0.5
        if not inside.any():
            inside[:] = True
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        canvas.paste(image, (x0, y0), Image.fromarray((alpha * 255).astype(np.uint8)))
        region = instances[y0:y0 + image.height, x0:x0 + image.width]
        region[inside] = len(placed) + 1
        placed.append(PlacedProduct(str(item_id), (x0 + int(cols[0]), y0 + int(rows[0]),
                                                   x0 + int(cols[-1]) + 1,
                                                   y0 + int(rows[-1]) + 1), role))
    buffer = io.BytesIO()
    quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
    canvas.save(buffer, format="JPEG", quality=quality)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return GeneratedScene(image, background_id, placed, {"jpeg_quality": quality},
                          instances=instances)


class SceneGenerator:
    """Scenes of one split (``train``, ``validation`` or ``test``): that split's backgrounds and
    products only. ``frame`` is the products table (``id``, ``split``, ``article_type``,
    ``base_colour``, ``image_jpeg``)."""

    def __init__(self, frame: Any, split: str, spec: SceneSpec | None = None,
                 seed: int = SPLIT_SEED, photos: Any = None) -> None:
        if split not in SPLITS:
            raise SceneGenerationError(f"unknown split {split!r}")
        self.split, self.spec, self.seed = split, spec or SceneSpec(), seed
        splits = [product_split(str(i), str(s), seed) for i, s in zip(frame["id"], frame["split"])]
        self.frame = frame
        self.products = frame[np.asarray(splits) == split].reset_index(drop=True)
        if len(self.products) < 6:
            raise SceneGenerationError(f"the {split} split has {len(self.products)} products")
        self.backgrounds = Backgrounds(split, seed, self.spec.photo_share, photos)
        self._photos: dict[str, Image.Image] = {}

    def photo(self, row: Any) -> Image.Image:
        key = str(row["id"])
        if key not in self._photos:
            self._photos[key] = decode_jpeg(row["image_jpeg"])
        return self._photos[key]

    def scene(self, rng: np.random.Generator, cutout: bool | None = None) -> GeneratedScene:
        """A scene of 1-6 random products of this split (all distractors: no target)."""
        n = int(rng.integers(self.spec.products[0], self.spec.products[1] + 1))
        rows = self.products.iloc[rng.choice(len(self.products), size=n, replace=False)]
        products = [(str(r["id"]), self.photo(r), "distractor") for _, r in rows.iterrows()]
        background, name = self.backgrounds.draw(self.spec.size, rng)
        return compose(background, name, products, self.spec, rng, cutout)

    def like_scene(self, rng: np.random.Generator, cutout: bool | None = None,
                   distractors: int = 4) -> tuple[GeneratedScene, str]:
        """A "find this product" scene and its ``like`` id: the target is a product of this
        split; ``like`` a different photo of the same article type and colour from the
        catalogue's train split (the query a shopper gives); distractors are this split's
        products of other article types."""
        query = self.frame[self.frame["split"] == "train"]
        pairs = query.groupby(["article_type", "base_colour"]).size()
        for _ in range(1000):
            target = self.products.iloc[int(rng.integers(len(self.products)))]
            key = (target["article_type"], target["base_colour"])
            if pairs.get(key, 0) > 1 or (pairs.get(key, 0) == 1 and target["split"] != "train"):
                matches = query[(query["article_type"] == key[0])
                                & (query["base_colour"] == key[1]) & (query["id"] != target["id"])]
                if len(matches):
                    break
        else:
            raise SceneGenerationError("no product has another photo of the same type and colour")
        like = str(matches.iloc[int(rng.integers(len(matches)))]["id"])
        others = self.products[self.products["article_type"] != target["article_type"]]
        chosen = others.iloc[rng.choice(len(others), size=distractors, replace=False)]
        products = [(str(target["id"]), self.photo(target), "target")]
        products += [(str(r["id"]), self.photo(r), "distractor") for _, r in chosen.iterrows()]
        order = rng.permutation(len(products))
        background, name = self.backgrounds.draw(self.spec.size, rng)
        scene = compose(background, name, [products[i] for i in order], self.spec, rng, cutout)
        scene.info.update({"like": like, "article_type": key[0], "colour": key[1]})
        return scene, like


#: The benchmark's scenes: 5 products of 70-160 px (longer side) on 640 x 480.
EVALUATION_SPEC = SceneSpec(side_range=(70, 160))
