"""Scenes with known truth for shop-the-look: real product photos pasted onto real photos.

No public data set pairs these catalogue photos with scene photos, so the benchmark builds its
own, from real pixels only:

- **backgrounds** are scikit-image's bundled sample photos (:data:`BACKGROUNDS`: coffee, brick,
  grass, gravel, astronaut, rocket, ...), converted to RGB, scaled to cover the scene size and
  centre-cropped;
- **products** are real catalogue photos (the test split in the benchmark), each scaled so its
  longer side is drawn uniformly from ``side_range`` (40-160 px by default; aspect ratio kept)
  and pasted **as-is**, white background included -- a product photo *is* a white rectangle
  with the product in it, and that is what a shopper's scene would contain if it showed one;
- products never overlap (a few pixels of gap), positions are uniform over the free space;
- the **truth** is the box of the target product (the one matching the shopper's taste, or
  matching the ``like`` product); the others are distractors of other article types.

Everything is driven by a ``numpy.random.Generator``, so a seed gives the same scenes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError

#: scikit-image sample photos used as backgrounds (all ship inside the package, no download).
BACKGROUNDS: tuple[str, ...] = ("coffee", "brick", "grass", "gravel", "astronaut", "rocket",
                                "chelsea", "camera", "coins", "moon", "hubble_deep_field",
                                "immunohistochemistry")
SCENE_SIZE = (640, 480)
SIDE_RANGE = (40, 160)


@dataclass
class PlacedProduct:
    """A product pasted into a scene: its id, box ``(x0, y0, x1, y1)`` and role."""

    item_id: str
    box: tuple[int, int, int, int]
    role: str = "distractor"  # or "target"


@dataclass
class Scene:
    """A generated scene photo and where each product went."""

    image: Image.Image
    background: str
    products: list[PlacedProduct] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> PlacedProduct:
        for product in self.products:
            if product.role == "target":
                return product
        raise LookalikeError("this scene has no target product")


def background_image(name: str, size: tuple[int, int] = SCENE_SIZE) -> Image.Image:
    """A scikit-image sample photo as an RGB image of ``size`` (scaled to cover, centre-cropped)."""
    from skimage import data

    if name not in BACKGROUNDS:
        raise LookalikeError(f"unknown background {name!r}; available: {', '.join(BACKGROUNDS)}")
    array = np.asarray(getattr(data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array).convert("RGB")
    width, height = size
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)),
                            max(height, round(image.height * scale))), Image.BILINEAR)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _overlaps(box: tuple[int, int, int, int], boxes: Sequence[tuple[int, int, int, int]],
              gap: int) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap
               for b in boxes)


#: A backdrop pixel differs from the backdrop colour by at most this much in every channel.
BACKDROP_TOLERANCE = 24
#: A photo has a plain backdrop when at least this share of its border is the backdrop colour.
PLAIN_BORDER = 0.6


def product_mask(photo: Image.Image, tolerance: int = BACKDROP_TOLERANCE) -> np.ndarray:
    """Where the product is in a catalogue photo: ``[H, W]`` bool, False on the backdrop.

    The backdrop colour is the median colour of the photo's border (white or light grey in a
    catalogue); the backdrop is the pixels within ``tolerance`` of it *connected to the border*,
    so same-coloured parts inside the product (a white collar, a logo) stay. A photo whose
    border is not mostly one colour (:data:`PLAIN_BORDER`, e.g. a lifestyle shot) is all
    product."""
    from scipy import ndimage

    pixels = np.asarray(photo.convert("RGB")).astype(np.int16)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = np.median(border, axis=0)
    if (np.abs(border - colour).max(axis=1) <= tolerance).mean() < PLAIN_BORDER:
        return np.ones(pixels.shape[:2], dtype=bool)
    near = (np.abs(pixels - colour).max(axis=2) <= tolerance)
    labels, _ = ndimage.label(near, structure=np.ones((3, 3), dtype=bool))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    mask = ~np.isin(labels, edge[edge > 0])
    return mask if mask.any() else np.ones_like(mask)


def compose_scene(background: str | Image.Image,
                  products: Sequence[tuple[str, Image.Image, str]], rng: np.random.Generator, *,
                  size: tuple[int, int] = SCENE_SIZE, side_range: tuple[int, int] = SIDE_RANGE,
                  gap: int = 4, max_tries: int = 500, cutout: bool = False) -> Scene:
    """Place ``(item_id, photo, role)`` products at random free positions onto a background.

    ``cutout=False`` (the default, the issue's protocol) pastes the whole photo, white
    rectangle included, and the box is the rectangle. ``cutout=True`` places the product
    itself: the photo's white backdrop (:func:`product_mask`) is dropped, so the scene shows the
    object on the background photo, as a shopper's scene would, and each box is the object's
    own box.
    """
    low, high = side_range
    if not 4 <= low <= high:
        raise LookalikeError(f"side_range must be increasing and at least 4 px, got {side_range}")
    if isinstance(background, Image.Image):
        canvas, name = background.convert("RGB").resize(size, Image.BILINEAR), "custom"
    else:
        canvas, name = background_image(background, size), background
    width, height = size
    placed: list[PlacedProduct] = []
    for item_id, photo, role in products:
        side = int(rng.integers(low, high + 1))
        scale = side / max(photo.size)
        w, h = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
        if w > width or h > height:
            raise LookalikeError(f"a {w}x{h} product does not fit a {width}x{height} scene")
        for _ in range(max_tries):
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if not _overlaps(box, [p.box for p in placed], gap):
                break
        else:
            raise LookalikeError(f"could not place {len(products)} products without overlap "
                                 f"in a {width}x{height} scene")
        resized = photo.convert("RGB").resize((w, h), Image.BILINEAR)
        if cutout:
            mask = Image.fromarray(product_mask(photo).astype(np.uint8) * 255).resize(
                (w, h), Image.BILINEAR)
            canvas.paste(resized, box[:2], mask)
            inside = np.asarray(mask) >= 128
            if inside.any():  # the object's own box
                rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
                box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1,
                       y0 + int(rows[-1]) + 1)
        else:
            canvas.paste(resized, box[:2])
        placed.append(PlacedProduct(str(item_id), box, role))
    return Scene(canvas, name, placed)


def decode_jpeg(data: bytes) -> Image.Image:
    """A catalogue photo from its JPEG bytes, as RGB."""
    return Image.open(io.BytesIO(data)).convert("RGB")


# ---- scenario builders used by the benchmark and the tests -----------------------------------------
#: Colour families for simulated tastes: base colours grouped by how a shopper would name them.
COLOUR_FAMILIES: dict[str, tuple[str, ...]] = {
    "dark": ("Black", "Charcoal", "Grey Melange", "Steel", "Grey", "Navy Blue"),
    "light": ("White", "Off White", "Cream", "Beige", "Silver", "Skin", "Nude"),
    "blue": ("Blue", "Navy Blue", "Turquoise Blue", "Teal", "Sea Green"),
    "red-pink": ("Red", "Maroon", "Pink", "Magenta", "Rose", "Burgundy", "Peach", "Coral"),
    "green": ("Green", "Olive", "Lime Green", "Fluorescent Green", "Sea Green", "Teal"),
    "brown-tan": ("Brown", "Tan", "Coffee Brown", "Khaki", "Mushroom Brown", "Bronze",
                  "Copper", "Taupe", "Rust"),
    "yellow-orange": ("Yellow", "Mustard", "Orange", "Gold", "Rust"),
    "purple": ("Purple", "Lavender", "Mauve"),
}


def colour_family(colour: str | None) -> str | None:
    """The first family a base colour belongs to (None for unlisted colours, e.g. Multi)."""
    for family, colours in COLOUR_FAMILIES.items():
        if colour in colours:
            return family
    return None


def like_scene(frame: Any, rng: np.random.Generator, *, distractors: int = 4,
               background: str | None = None, size: tuple[int, int] = SCENE_SIZE,
               side_range: tuple[int, int] = SIDE_RANGE, cutout: bool = False,
               query_split: str = "train", scene_split: str = "test") -> tuple[Scene, str]:
    """A scene for "find this product": returns the scene and the ``like`` item id.

    ``frame`` is the products table (``id``, ``article_type``, ``base_colour``, ``split``,
    ``image_jpeg``). The target is a ``scene_split`` product; the ``like`` product is a different
    ``query_split`` photo of the same article type and colour; distractors are ``scene_split``
    products of other article types.
    """
    scene_rows = frame[frame["split"] == scene_split]
    query_rows = frame[frame["split"] == query_split]
    pairs = query_rows.groupby(["article_type", "base_colour"]).size()
    for _ in range(1000):
        target = scene_rows.iloc[int(rng.integers(len(scene_rows)))]
        key = (target["article_type"], target["base_colour"])
        if pairs.get(key, 0) == 0:
            continue
        matches = query_rows[(query_rows["article_type"] == key[0])
                             & (query_rows["base_colour"] == key[1])
                             & (query_rows["id"] != target["id"])]
        if len(matches):
            break
    else:
        raise LookalikeError("no product has another photo of the same type and colour")
    like = matches.iloc[int(rng.integers(len(matches)))]
    others = scene_rows[scene_rows["article_type"] != target["article_type"]]
    chosen = others.iloc[rng.choice(len(others), size=distractors, replace=False)]
    products = [(str(target["id"]), decode_jpeg(target["image_jpeg"]), "target")]
    products += [(str(r["id"]), decode_jpeg(r["image_jpeg"]), "distractor")
                 for _, r in chosen.iterrows()]
    order = rng.permutation(len(products))  # the target is not always pasted first
    name = background or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    scene = compose_scene(name, [products[i] for i in order], rng, size=size,
                          side_range=side_range, cutout=cutout)
    scene.info = {"like": str(like["id"]), "article_type": key[0], "colour": key[1]}
    return scene, str(like["id"])


@dataclass
class Taste:
    """A simulated shopper's hidden taste, drawn from the real attributes."""

    gender: str
    usage: str
    article_types: tuple[str, ...]
    colour_family: str

    def matches(self, frame: Any) -> np.ndarray:
        """Boolean mask of the rows of ``frame`` this taste likes."""
        family = COLOUR_FAMILIES[self.colour_family]
        return ((frame["gender"] == self.gender) & (frame["usage"] == self.usage)
                & frame["article_type"].isin(self.article_types)
                & frame["base_colour"].isin(family)).to_numpy()

    def to_json(self) -> dict[str, Any]:
        return {"gender": self.gender, "usage": self.usage,
                "article_types": list(self.article_types), "colour_family": self.colour_family}


def draw_taste(frame: Any, rng: np.random.Generator, *, min_items: int = 25,
               min_test_items: int = 3, max_types: int = 3) -> Taste:
    """A taste (gender + usage + 1-3 article types + a colour family) with at least
    ``min_items`` train and ``min_test_items`` test products."""
    for _ in range(5000):
        row = frame.iloc[int(rng.integers(len(frame)))]
        family = colour_family(row["base_colour"])
        if family is None or not row["gender"] or not row["usage"]:
            continue
        same = frame[(frame["gender"] == row["gender"]) & (frame["usage"] == row["usage"])
                     & frame["base_colour"].isin(COLOUR_FAMILIES[family])]
        types = same["article_type"].value_counts()
        types = types[types >= 5]
        extra = [t for t in types.index if t != row["article_type"]]
        n_types = int(rng.integers(1, max_types + 1))
        picked = [row["article_type"]] + list(rng.permutation(extra)[:n_types - 1]) if extra \
            else [row["article_type"]]
        taste = Taste(str(row["gender"]), str(row["usage"]), tuple(map(str, picked)), family)
        mask = taste.matches(frame)
        if ((frame["split"] == "train").to_numpy() & mask).sum() >= min_items and \
                ((frame["split"] == "test").to_numpy() & mask).sum() >= min_test_items:
            return taste
    raise LookalikeError("could not draw a taste with enough products")


# ---- simulated shoppers -----------------------------------------------------------------------
@dataclass
class SimulatedShopper:
    """A simulated shopper: a hidden taste, the items viewed (oldest first) and the next items."""

    taste: Taste
    views: list[str]
    next_items: list[str]


def simulate_shoppers(frame: Any, n_shoppers: int, seed: int = 0, *, noise: float = 0.2,
                      views: int = 20, next_items: int = 5, min_items: int = 30,
                      view_split: str = "train",
                      next_split: str = "test") -> list[SimulatedShopper]:
    """Shoppers with a hidden :class:`Taste`, a view sequence and held-out next items.

    No public event log matches the catalogue photos, so this is how the recommenders are
    measured: each shopper's taste is drawn from the real attributes (:func:`draw_taste`: at
    least ``min_items`` ``view_split`` and ``next_items`` ``next_split`` matches); each of the
    ``views`` views is a random not-yet-viewed ``view_split`` item matching the taste with
    probability ``1 - noise`` and a random ``view_split`` item otherwise; the next items are
    ``next_items`` ``next_split`` items matching the taste. Seeded: the same arguments give the
    same shoppers.
    """
    if n_shoppers < 1 or views < 1 or next_items < 1 or not 0.0 <= noise < 1.0:
        raise LookalikeError("simulate_shoppers: need n_shoppers, views, next_items >= 1 and "
                             "0 <= noise < 1")
    rng = np.random.default_rng(seed)
    ids = frame["id"].astype(str).to_numpy()
    on_view_side = (frame["split"] == view_split).to_numpy()
    on_next_side = (frame["split"] == next_split).to_numpy()
    view_pool = ids[on_view_side]
    shoppers = []
    while len(shoppers) < n_shoppers:
        taste = draw_taste(frame, rng, min_items=max(min_items, views),
                           min_test_items=next_items)
        matches = taste.matches(frame)
        liked = list(rng.permutation(ids[matches & on_view_side]))
        sequence: list[str] = []
        while len(sequence) < views:
            pick = str(view_pool[rng.integers(len(view_pool))]) if rng.random() < noise \
                else str(liked.pop())
            if pick not in sequence:
                sequence.append(pick)
        held_out = rng.choice(ids[matches & on_next_side], size=next_items, replace=False)
        shoppers.append(SimulatedShopper(taste, sequence, [str(i) for i in held_out]))
    return shoppers


def shopper_event_log(shoppers: Sequence[SimulatedShopper], start: str = "2024-01-01",
                      seconds_between: float = 60.0) -> Any:
    """Simulated shoppers as an event log (``shopper``, ``item``, ``timestamp`` ISO 8601 UTC,
    ``event``): the views, then the next items, one event every ``seconds_between`` seconds.
    Replayed with a time split that holds out the last ``len(next_items)`` events, the held-out
    items are exactly the shopper's next items."""
    import pandas as pd

    base = pd.Timestamp(start, tz="UTC")
    rows = []
    for number, shopper in enumerate(shoppers):
        for step, item in enumerate([*shopper.views, *shopper.next_items]):
            stamp = base + pd.Timedelta(seconds=number * 86400 + step * seconds_between)
            rows.append({"shopper": f"shopper-{number:04d}", "item": item,
                         "timestamp": stamp.isoformat(), "event": "view"})
    return pd.DataFrame(rows, columns=["shopper", "item", "timestamp", "event"])
