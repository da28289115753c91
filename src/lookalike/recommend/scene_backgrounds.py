"""Background photos and textures for generated shop-the-look scenes, split by background.

A localiser trained and measured on scenes drawn over the same dozen photos learns those photos.
Here every background has a stable id and belongs to exactly one of three splits
(:data:`SPLITS`), decided by a seeded hash of the id (:func:`split_of`), so the split of a
background never depends on which other backgrounds a machine has:

- **photos** (:func:`photo_ids`): scikit-image's bundled sample photos (``skimage:<name>``),
  matplotlib's sample photo, and every wallpaper of Debian's background packages that is
  installed (``file:<path>``: ``gnome-backgrounds``, ``mate-backgrounds``, ``desktop-base``;
  ``scripts/system-deps.sh`` installs them). Each scene shows a random crop (30-100 % of the
  photo's side), maybe mirrored, of one photo;
- **procedural textures** (:data:`PROCEDURAL_FAMILIES`, ``procedural:<family>:<k>``, ``k <``
  :data:`PROCEDURAL_PER_FAMILY`): linear and radial gradients, multi-octave value noise, stripes,
  checks, soft blobs and sine waves, each drawn from its own seed ``k``.

:func:`split_manifest` lists every id per split; the benchmark saves it with its results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError

#: The three disjoint splits and the share of backgrounds (and of train products) in each.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_SHARES: tuple[float, ...] = (0.7, 0.15, 0.15)
#: The seed of the split hash (changing it re-deals every background).
SPLIT_SEED = 17
#: scikit-image's bundled photos (grey ones are used as grey backgrounds).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon",
    "page", "retina", "rocket", "text", "clock",
    "colorwheel", "logo")
#: Folders searched for wallpapers (Debian packages), image files of at least 100 kB.
WALLPAPER_FOLDERS: tuple[str, ...] = ("/usr/share/backgrounds", "/usr/share/desktop-base",
                                      "/usr/share/images/desktop-base", "/usr/share/wallpapers")
WALLPAPER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PROCEDURAL_FAMILIES: tuple[str, ...] = ("gradient", "radial", "noise", "stripes", "checks",
                                        "blobs", "waves")
PROCEDURAL_PER_FAMILY = 3000
#: Photos are kept at most this many pixels on their longer side once loaded.
PHOTO_MAX_SIDE = 1280


class BackgroundError(LookalikeError):
    """A background id that is unknown or cannot be loaded."""


def split_of(background_id: str, seed: int = SPLIT_SEED) -> str:
    """The split a background belongs to: a seeded SHA-256 of its id, mapped to
    :data:`SPLIT_SHARES`. Depends on nothing but the id and the seed."""
    digest = hashlib.sha256(f"{seed}:{background_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2 ** 64
    edges = np.cumsum(SPLIT_SHARES)
    return SPLITS[min(int(np.searchsorted(edges, position, side="right")), len(SPLITS) - 1)]


def photo_ids(folders: Sequence[str] = WALLPAPER_FOLDERS) -> list[str]:
    """Ids of every background photo on this machine (bundled ones always; wallpapers when
    their Debian packages are installed), sorted."""
    import matplotlib

    ids = [f"skimage:{name}" for name in SKIMAGE_PHOTOS]
    sample = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if sample.is_file():
        ids.append(f"file:{sample}")
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in WALLPAPER_SUFFIXES and path.is_file() \
                    and path.stat().st_size >= 100_000 and "grub" not in path.parts:
                ids.append(f"file:{path}")
    return sorted(set(ids))


def procedural_ids() -> list[str]:
    """Ids of every procedural texture."""
    return [f"procedural:{family}:{k}" for family in PROCEDURAL_FAMILIES
            for k in range(PROCEDURAL_PER_FAMILY)]


def split_manifest(seed: int = SPLIT_SEED) -> dict[str, object]:
    """Every background id of this machine by split, with the rule that made it."""
    photos, textures = photo_ids(), procedural_ids()
    splits = {name: {"photos": [i for i in photos if split_of(i, seed) == name],
                     "procedural": sum(split_of(i, seed) == name for i in textures)}
              for name in SPLITS}
    return {"rule": "sha256(f'{seed}:{id}') as a fraction in [0, 1) against cumulative shares",
            "seed": seed, "shares": dict(zip(SPLITS, SPLIT_SHARES)), "splits": splits,
            "procedural_ids": f"procedural:<family>:<k>, k < {PROCEDURAL_PER_FAMILY}, "
                              f"families {', '.join(PROCEDURAL_FAMILIES)}"}


def load_photo(background_id: str) -> Image.Image:
    """A background photo as RGB, at most :data:`PHOTO_MAX_SIDE` px on its longer side."""
    kind, _, name = background_id.partition(":")
    try:
        if kind == "skimage":
            from skimage import data

            array = np.asarray(getattr(data, name)())
            if array.dtype == bool:
                array = array.astype(np.uint8) * 255
            if array.dtype != np.uint8:
                array = (255 * (array - array.min()) / max(np.ptp(array), 1e-9)).astype(np.uint8)
            image = Image.fromarray(array[..., :3] if array.ndim == 3 else array)
        elif kind == "file":
            image = Image.open(name)
            image.draft("RGB", (PHOTO_MAX_SIDE, PHOTO_MAX_SIDE))  # JPEGs decode smaller
        else:
            raise BackgroundError(f"{background_id!r} is not a photo id")
        image = image.convert("RGB")
    except (OSError, AttributeError, ValueError) as error:
        raise BackgroundError(f"cannot load background {background_id!r}: {error}") from None
    image.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE))
    return image


def crop_photo(photo: Image.Image, size: tuple[int, int], rng: np.random.Generator
               ) -> Image.Image:
    """A random crop of ``photo`` (30-100 % of the largest crop of the scene's shape), maybe
    mirrored, resized to ``size``."""
    width, height = size
    fit = min(photo.width / width, photo.height / height)
    scale = fit * float(rng.uniform(0.3, 1.0))
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    x0 = int(rng.integers(0, photo.width - cw + 1))
    y0 = int(rng.integers(0, photo.height - ch + 1))
    crop = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BILINEAR)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 255, size=(n, 3))


def _value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC))


def procedural_texture(background_id: str, size: tuple[int, int]) -> Image.Image:
    """The texture ``procedural:<family>:<k>`` at ``size``; the same id gives the same pixels."""
    parts = background_id.split(":")
    if len(parts) != 3 or parts[0] != "procedural" or parts[1] not in PROCEDURAL_FAMILIES:
        raise BackgroundError(f"{background_id!r} is not a procedural texture id")
    family, k = parts[1], int(parts[2])
    rng = np.random.default_rng([SPLIT_SEED, PROCEDURAL_FAMILIES.index(family), k])
    width, height = max(1, size[0] // 2), max(1, size[1] // 2)  # drawn at half size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = _colours(rng, 2)
    if family in ("gradient", "radial", "noise", "waves"):
        if family == "gradient":
            angle = rng.uniform(0, 2 * np.pi)
            t = xs * np.cos(angle) + ys * np.sin(angle)
        elif family == "radial":
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            t = np.hypot(xs - cx, ys - cy)
        elif family == "noise":
            t = sum(_value_noise(rng, height, width, int(c)) / (i + 1)
                    for i, c in enumerate(rng.integers(2, 40, size=4)))
        else:
            f1, f2 = rng.uniform(0.005, 0.06, size=2)
            t = np.sin(xs * f1 + rng.uniform(0, 6)) + np.sin(ys * f2 + np.sin(xs * f1 / 3))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        pixels = a * (1 - t[..., None]) + b * t[..., None]
    elif family in ("stripes", "checks"):
        period = rng.uniform(3, 45)
        angle = rng.uniform(0, np.pi)
        u = xs * np.cos(angle) + ys * np.sin(angle)
        on = (u // period) % 2 == 0
        if family == "checks":
            on ^= ((-xs * np.sin(angle) + ys * np.cos(angle)) // period) % 2 == 0
        pixels = np.where(on[..., None], a, b)
    else:  # blobs: soft coloured discs on a plain colour
        pixels = np.broadcast_to(a, (height, width, 3)).copy()
        for colour, (cx, cy, r) in zip(_colours(rng, 12), rng.uniform(0, 1, size=(12, 3))):
            alpha = np.clip(1 - np.hypot(xs - cx * width, ys - cy * height)
                            / (10 + r * 100), 0, 1)[..., None]
            pixels = pixels * (1 - alpha) + colour * alpha
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    grain = rng.normal(0, rng.uniform(0, 12), size=(size[1], size[0], 1))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))


class Backgrounds:
    """The backgrounds of one split: ``draw(size, rng)`` gives a random background image and
    its id. Photos are loaded once per instance (kept in memory, downscaled)."""

    def __init__(self, split: str, seed: int = SPLIT_SEED, photo_share: float = 0.6,
                 photos: Sequence[str] | None = None) -> None:
        if split not in SPLITS:
            raise BackgroundError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
        self.split, self.seed, self.photo_share = split, seed, float(photo_share)
        self.photo_ids = [i for i in (photo_ids() if photos is None else photos)
                          if split_of(i, seed) == split]
        self.procedural_ids = [i for i in procedural_ids() if split_of(i, seed) == split]
        self._photos: dict[str, Image.Image] = {}

    def ids(self) -> list[str]:
        """Every background id of this split on this machine."""
        return [*self.photo_ids, *self.procedural_ids]

    def photo(self, background_id: str) -> Image.Image:
        if background_id not in self._photos:
            self._photos[background_id] = load_photo(background_id)
        return self._photos[background_id]

    def draw(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[Image.Image, str]:
        """A background of ``size`` from this split and its id."""
        if self.photo_ids and rng.random() < self.photo_share:
            chosen = self.photo_ids[int(rng.integers(len(self.photo_ids)))]
            return crop_photo(self.photo(chosen), size, rng), chosen
        chosen = self.procedural_ids[int(rng.integers(len(self.procedural_ids)))]
        return procedural_texture(chosen, size), chosen
