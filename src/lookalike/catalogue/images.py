"""One safe image decode used everywhere (ingest, store, query photos, the service).

Every image lookalike reads goes through :func:`decode_image`, so bad input fails the same way
everywhere: an :class:`~lookalike.errors.ImageRejected` with a short ``reason`` code

``empty``         zero bytes
``missing``       the file does not exist (set by callers that resolve paths, e.g. ingest)
``not-an-image``  the bytes are not an image at all (text, random bytes, ...)
``unsupported``   a real image, but in a format lookalike does not read (ICO, PSD, HEIC, SVG, ...)
``too-large``     width x height above ``max_pixels`` (a decompression bomb), checked from the
                  header *before* any pixel is decoded
``truncated``     the file ends before the image does
``unreadable``    anything else the decoder refuses (corrupt data, unreadable file)

and a successful decode always gives an 8-bit RGB image with the EXIF orientation applied,
transparency composited onto white and 16-bit samples scaled (not clipped) to 8 bits.
Pillow's global settings (``LOAD_TRUNCATED_IMAGES``, ``MAX_IMAGE_PIXELS``) are never changed.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # some Pillow plugins raise it on a broken header
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.errors import ImageRejected

DEFAULT_MAX_PIXELS = 64_000_000
#: File extensions a folder source treats as images (other files are still offered to ingest,
#: which rejects them with a reason).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
#: Pillow formats lookalike reads (the JPEG reader also opens MPO, the multi-picture JPEG some
#: cameras write, whose first picture is used).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
REJECT_REASONS = ("empty", "missing", "not-an-image", "unsupported", "too-large", "truncated",
                  "unreadable")

# The errors Pillow raises for bad data, depending on the format and plugin.
_DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, zlib.error, struct_error)

# Image formats with an unambiguous signature that we recognise but do not read, so a user gets
# "unsupported ICO image" instead of "not an image". (offset, magic, name)
_UNSUPPORTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"8BPS", "PSD"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"jP  ", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"),
    (4, b"JXL ", "JPEG XL"),
    (0, b"qoif", "QOI"),
    (0, b"icns", "ICNS"),
    (0, b"DDS ", "DDS"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript"),
    (0, b"II*\x00\x10\x00\x00\x00CR", "Canon raw"),
)
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC",
                b"heis": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF",
                b"avis": "AVIF"}


class ImageInfo(NamedTuple):
    """What the header says: Pillow format name and size in pixels (nothing decoded)."""

    format: str
    width: int
    height: int


@dataclass
class DecodedImage:
    """A decoded image plus what the store needs to know about the original bytes."""

    image: Image.Image          # RGB, orientation applied
    format: str                 # Pillow format of the original, e.g. "JPEG"
    original_mode: str          # Pillow mode before normalisation, e.g. "CMYK", "I;16", "P"
    transposed: bool            # an EXIF orientation other than "normal" was applied
    frames: int                 # number of frames in the original (only the first is used)

    @property
    def is_plain(self) -> bool:
        """True when the original bytes already decode to exactly ``image`` with no work:
        a single-frame 8-bit RGB or greyscale JPEG/PNG without transparency or rotation."""
        return (self.format in ("JPEG", "PNG") and self.original_mode in ("RGB", "L")
                and not self.transposed and self.frames == 1)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the content hash used throughout lookalike)."""
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(data: bytes | str | Path, source: str | None = None) -> bytes:
    """The raw bytes of an image given as bytes or a path; a missing file is ``missing``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    path = Path(data)
    # Name the file in the message unless the source label already is that path.
    named = "" if source in (None, str(path)) else f" {path}"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageRejected("missing", f"no such file{named}", source or str(path)) from None
    except IsADirectoryError:
        raise ImageRejected("unreadable", f"{path} is a folder, not a file",
                            source or str(path)) from None
    except OSError as error:
        raise ImageRejected("unreadable", f"cannot read file{named} ({error.strerror or error})",
                            source or str(path)) from None


def image_info(data: bytes | str | Path, *, source: str | None = None) -> ImageInfo:
    """Format and size from the header only; raises :class:`ImageRejected` like ``decode_image``."""
    raw = read_image_bytes(data, source)
    source = source or (None if isinstance(data, (bytes, bytearray, memoryview)) else str(data))
    image = _open(raw, source)
    return ImageInfo(str(image.format), image.width, image.height)


def decode_image(data: bytes | str | Path, *, source: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file or bytes to an 8-bit RGB :class:`PIL.Image.Image`.

    EXIF orientation is applied, transparency is composited onto white, 16-bit and float images
    are scaled to 8 bits and CMYK is converted. Raises :class:`ImageRejected` (see the module
    docstring for the reasons); ``source`` names the image in the message.
    """
    return decode(data, source=source, max_pixels=max_pixels).image


def as_image(image: str | Path | bytes | Image.Image) -> Image.Image:
    """A query photo as RGB: a Pillow image is converted, a path or bytes decoded safely."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), source="uploaded image")
    return decode_image(Path(image), source=str(image))


def decode(data: bytes | str | Path, *, source: str | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """:func:`decode_image` plus facts about the original (format, mode, rotation)."""
    raw = read_image_bytes(data, source)
    source = source or (None if isinstance(data, (bytes, bytearray, memoryview)) else str(data))
    image = _open(raw, source)
    width, height = image.size
    if width * height > max_pixels:  # from the header, before a single pixel is decoded
        raise ImageRejected(
            "too-large", f"{width}x{height} pixels is more than the limit of {max_pixels:,} "
            "(a decompression bomb, or a photo far larger than needed)", source)
    fmt = str(image.format)
    try:
        image.load()
        frames = int(getattr(image, "n_frames", 1) or 1)
    except _DECODE_ERRORS as error:
        raise _load_error(error, fmt, source) from None
    mode = image.mode
    upright = _exif_transpose(image)
    transposed = upright is not image
    try:
        rgb = to_rgb(upright)
    except _DECODE_ERRORS as error:
        raise ImageRejected("unsupported", f"{fmt} image in mode {mode} cannot be converted "
                            f"to RGB ({error})", source) from None
    return DecodedImage(image=rgb, format=fmt, original_mode=mode, transposed=transposed,
                        frames=frames)


def to_rgb(image: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB (alpha onto white, 16-bit scaled, CMYK converted)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, ...


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB ``image`` (no EXIF, so no orientation surprises later)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0, optimize=True)
    return buffer.getvalue()


# ---- internals ---------------------------------------------------------------------------------

def _open(raw: bytes, source: str | None) -> Image.Image:
    """Open (header only) with the supported formats, mapping every failure to a reason."""
    if not raw:
        raise ImageRejected("empty", "the file is empty (0 bytes)", source)
    try:
        return Image.open(io.BytesIO(raw), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own limit (only reached when max_pixels is above it, or warnings are errors).
        raise ImageRejected("too-large", f"decompression bomb ({error})", source) from None
    except UnidentifiedImageError:
        other = _unsupported_format(raw)
        if other:
            raise ImageRejected("unsupported", f"{other} images are not supported; use one of "
                                f"{', '.join(SUPPORTED_FORMATS)}", source) from None
        raise ImageRejected("not-an-image", "not an image (no known image format "
                            f"starts with bytes {raw[:8]!r})", source) from None
    except _DECODE_ERRORS as error:
        # The signature matched but the header is broken (e.g. a PNG cut inside its header).
        if len(raw) < 64 or "truncated" in str(error).lower() or isinstance(error, EOFError):
            raise ImageRejected("truncated", f"the file ends inside the image header ({error})",
                                source) from None
        raise ImageRejected("unreadable", f"broken image header ({error})", source) from None


def _load_error(error: BaseException, fmt: str, source: str | None) -> ImageRejected:
    text = str(error)
    lowered = text.lower()
    if isinstance(error, EOFError) or "truncated" in lowered or "broken data stream" in lowered \
            or "premature end" in lowered or "incomplete" in lowered:
        return ImageRejected("truncated", f"{fmt} file is truncated: the data ends before the "
                             "image does", source)
    if "decoder" in lowered and "not available" in lowered:
        return ImageRejected("unsupported", f"{fmt} variant not supported ({text})", source)
    return ImageRejected("unreadable", f"corrupt {fmt} data ({text})", source)


def _exif_transpose(image: Image.Image) -> Image.Image:
    """The upright image, or ``image`` itself when no rotation is needed (or EXIF is broken)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block must not reject an otherwise good photo
        return image
    if orientation in (None, 1) or orientation not in range(2, 9):
        return image
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # same: keep the pixels as stored rather than fail
        return image
    return upright if upright is not None else image


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit int / float greyscale to 8-bit RGB by scaling, never by clipping."""
    array = np.asarray(image)
    if image.mode == "F":
        array = np.nan_to_num(array.astype(np.float64))
        peak = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0 if array.max() <= 255.0 \
            else float(array.max())
        scaled = array / peak * 255.0
    elif image.mode == "I" and array.max(initial=0) > 65535:
        scaled = array.astype(np.float64) / float(array.max()) * 255.0
    else:
        # I;16 and the "I" mode Pillow uses for 16-bit PNGs: 65535 maps to 255.
        scaled = array.astype(np.float64) / 257.0
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _unsupported_format(raw: bytes) -> str | None:
    head = raw[:1024]
    for offset, magic, name in _UNSUPPORTED_SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return _HEIF_BRANDS[head[8:12]]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    return None


def storable_bytes(raw: bytes, decoded: DecodedImage) -> tuple[bytes, str]:
    """The bytes (and extension) the catalogue stores for an image.

    The original bytes when they are already a plain RGB/grey JPEG or PNG (see
    :attr:`DecodedImage.is_plain`); otherwise the normalised RGB re-encoded, as JPEG q95 for
    photos (JPEG and WebP sources) and lossless PNG for everything else. Either way a later
    decode is cheap (no rotation, colour conversion or compositing left to do) and always gives
    the same pixels."""
    if decoded.is_plain:
        return raw, "jpg" if decoded.format == "JPEG" else "png"
    if decoded.format in ("JPEG", "MPO", "WEBP"):
        return encode_jpeg(decoded.image), "jpg"
    return encode_png(decoded.image), "png"
