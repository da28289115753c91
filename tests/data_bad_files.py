"""Build, at test time, a folder source mixing real product photos with every kind of bad file.

All pictures are real: product photos from the bundled demo slice and scikit-image's sample
photos, re-encoded into the awkward forms a real catalogue contains. ``make_bad_folder`` returns
the folder plus what ingest should make of each file, so tests assert against it.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lookalike.catalogue.sources import demo_parquet

BOMB_SIDE = 20_000


@dataclass
class BadFolder:
    root: Path
    #: item id -> reject reason, for files ingest must reject
    expected_rejects: dict[str, str] = field(default_factory=dict)
    #: item id -> (width, height) the decoded image must have, for files ingest must keep
    expected_good: dict[str, tuple[int, int]] = field(default_factory=dict)


def demo_photos(count: int, offset: int = 0) -> list[tuple[str, bytes]]:
    """``count`` (id, JPEG bytes) real product photos from the bundled demo slice."""
    frame = pd.read_parquet(demo_parquet(), columns=["id", "image_jpeg"])
    rows = frame.iloc[offset:offset + count]
    return [(str(i), bytes(b)) for i, b in zip(rows["id"], rows["image_jpeg"], strict=True)]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_photo() -> Image.Image:
    """A real colour photo (scikit-image's 'chelsea', 451x300), RGB."""
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` white pixels: ~40 KB on disk, ``side``² pixels
    (1.2 GB as RGB) when decoded. Built row by row, so it never needs the full image in memory."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" + b"\xff" * ((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(1)
    block_rows = 500  # compress a few rows at a time: fast, and never the whole image
    chunks = [compressor.compress(row * min(block_rows, side - start))
              for start in range(0, side, block_rows)]
    data = b"".join(chunks) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def sixteen_bit_png(photo: Image.Image) -> bytes:
    """A 16-bit greyscale PNG of a real photo (full 0..65535 range, I;16)."""
    grey = np.asarray(photo.convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def exif_rotated_jpeg(photo: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo, "JPEG", quality=92, exif=exif.tobytes())


def palette_alpha_png(photo: Image.Image) -> bytes:
    """A palette PNG whose left quarter is fully transparent."""
    rgba = photo.convert("RGBA")
    alpha = np.full((photo.height, photo.width), 255, np.uint8)
    alpha[:, : photo.width // 4] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba.quantize(colors=64, method=Image.Quantize.FASTOCTREE), "PNG")


def make_bad_folder(root: Path) -> BadFolder:
    """Write the folder source (category sub-folders) and return what ingest should find."""
    root.mkdir(parents=True, exist_ok=True)
    out = BadFolder(root)
    photos = demo_photos(8)
    photo = sample_photo()

    def put(relative: str, data: bytes, reject: str | None = None,
            size: tuple[int, int] | None = None) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        item_id = relative.rsplit(".", 1)[0] if Path(relative).suffix.lower() in {
            ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} else relative
        if reject:
            out.expected_rejects[item_id] = reject
        else:
            out.expected_good[item_id] = size or Image.open(io.BytesIO(data)).size

    # good: real product photos in two categories, plus formats that need normalising
    for index, (item_id, jpeg) in enumerate(photos[:6]):
        put(f"{'shoes' if index % 2 else 'shirts'}/{item_id}.jpg", jpeg)
    put("shirts/sixteen-bit.png", sixteen_bit_png(photo), size=photo.size)
    put("shirts/cmyk.jpg", encode(photo.convert("CMYK"), "JPEG", quality=92), size=photo.size)
    put("shoes/rotated.jpg", exif_rotated_jpeg(photo), size=(photo.height, photo.width))
    put("shoes/palette-alpha.png", palette_alpha_png(photo), size=photo.size)
    put("shoes/greyscale-alpha.png", encode(photo.convert("LA"), "PNG"), size=photo.size)
    put("bags/product.webp", encode(Image.open(io.BytesIO(photos[6][1])), "WEBP"))

    # bad: every reason ingest knows
    half = photos[7][1][: len(photos[7][1]) // 2]
    rng = np.random.default_rng(7)
    put("shoes/truncated.jpg", half, reject="truncated")
    put("shoes/corrupt.jpg", rng.bytes(3000), reject="not-an-image")
    put("shirts/empty.jpg", b"", reject="empty")
    put("shirts/notes.jpg", b"size chart: S M L XL\nwash at 30 degrees\n", reject="not-an-image")
    put("bags/bomb.png", png_bomb(), reject="too-large")
    put("bags/icon.ico", encode(photo.resize((64, 64)), "ICO"), reject="unsupported")
    put("bags/README.txt", b"photos from the spring catalogue\n", reject="not-an-image")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: must be skipped
    return out
