"""lookalike.catalogue.images: the one safe decode, on real photos in awkward encodings."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from data_bad_files import (demo_photos, encode, exif_rotated_jpeg, palette_alpha_png, png_bomb,
                            sample_photo, sixteen_bit_png)
from lookalike.catalogue.images import (DEFAULT_MAX_PIXELS, decode, decode_image, image_info,
                                        sha256_hex, storable_bytes)
from lookalike.errors import ImageRejected, LookalikeError


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return sample_photo()


@pytest.fixture(scope="module")
def product_jpeg() -> bytes:
    return demo_photos(1)[0][1]


def reject_reason(data, **options) -> str:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, source="test-image", **options)
    assert str(caught.value).startswith("test-image: ")  # the message says where
    assert isinstance(caught.value, LookalikeError)
    return caught.value.reason


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_product_photo_decodes_to_rgb_and_counts_as_plain(product_jpeg):
    decoded = decode(product_jpeg)
    reference = Image.open(io.BytesIO(product_jpeg))
    assert decoded.image.mode == "RGB" and decoded.image.size == reference.size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(reference.convert("RGB")))
    assert decoded.is_plain and storable_bytes(product_jpeg, decoded) == (product_jpeg, "jpg")


def test_every_demo_photo_decodes():
    photos = demo_photos(5000)
    assert len(photos) > 1900
    images = [decode_image(data) for _, data in photos]
    assert {image.mode for image in images} == {"RGB"}
    sizes = [image.size for image in images]
    assert sizes.count((60, 80)) > 0.95 * len(sizes)  # "almost all 60x80" per the data README
    assert all(50 <= w <= 80 and 50 <= h <= 80 for w, h in sizes)


def test_sixteen_bit_png_is_scaled_not_clipped(photo):
    data = sixteen_bit_png(photo)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16-bit on disk
    decoded = decode(data)
    grey = np.asarray(photo.convert("L")).astype(np.int16)
    result = as_array(decoded.image)
    assert decoded.image.mode == "RGB"
    assert np.abs(result[..., 0] - grey).max() <= 1  # 65535 -> 255, not clipped to white
    assert result.mean() < 200
    assert not decoded.is_plain
    stored, ext = storable_bytes(data, decoded)
    assert ext == "png" and Image.open(io.BytesIO(stored)).mode == "RGB"


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours(photo):
    decoded = decode(encode(photo.convert("CMYK"), "JPEG", quality=95))
    assert decoded.original_mode == "CMYK" and decoded.image.mode == "RGB"
    difference = np.abs(as_array(decoded.image) - as_array(photo)).mean()
    assert difference < 8, difference
    assert storable_bytes(b"", decoded)[1] == "jpg"  # a photo: re-encoded as JPEG


@pytest.mark.parametrize("orientation, transpose", [
    (6, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180),
    (8, Image.Transpose.ROTATE_90), (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_orientation_is_applied(photo, orientation, transpose):
    data = exif_rotated_jpeg(photo, orientation)
    decoded = decode(data)
    expected = photo.transpose(transpose)
    assert decoded.image.size == expected.size
    assert np.abs(as_array(decoded.image) - as_array(expected)).mean() < 4
    assert decoded.transposed and not decoded.is_plain
    # what the store keeps is already upright and carries no orientation tag
    stored, _ = storable_bytes(data, decoded)
    again = decode(stored)
    assert again.image.size == expected.size and not again.transposed


def test_palette_png_with_transparency_is_composited_onto_white(photo):
    decoded = decode(palette_alpha_png(photo))
    pixels = np.asarray(decoded.image)
    assert decoded.original_mode == "P" and decoded.image.mode == "RGB"
    assert (pixels[:, : photo.width // 4] == 255).all()  # transparent quarter -> white
    opaque = as_array(decoded.image)[:, photo.width // 4 + 1:]
    assert np.abs(opaque - as_array(photo)[:, photo.width // 4 + 1:]).mean() < 12


def test_rgba_and_grey_alpha_are_composited_onto_white(photo):
    rgba = photo.convert("RGBA")
    alpha = np.full((photo.height, photo.width), 255, np.uint8)
    alpha[:50] = 0
    rgba.putalpha(Image.fromarray(alpha))
    for image in (rgba, rgba.convert("LA")):
        pixels = np.asarray(decode_image(encode(image, "PNG")))
        assert (pixels[:50] == 255).all()
        assert pixels[50:].mean() < 200  # the photo is still there


def test_greyscale_becomes_three_equal_channels(photo):
    pixels = np.asarray(decode_image(encode(photo.convert("L"), "PNG")))
    assert pixels.shape == (photo.height, photo.width, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF", "BMP"])
def test_other_supported_formats(photo, fmt):
    assert decode_image(encode(photo, fmt)).size == photo.size


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_files_are_rejected_not_half_decoded(photo, product_jpeg, fraction):
    png = encode(photo, "PNG")
    started = time.perf_counter()
    assert reject_reason(product_jpeg[: int(len(product_jpeg) * fraction)]) == "truncated"
    assert reject_reason(png[: int(len(png) * fraction)]) == "truncated"
    assert time.perf_counter() - started < 2  # never hangs
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # and no global switch was flipped


def test_header_only_fragment_is_truncated(product_jpeg):
    assert reject_reason(product_jpeg[:40]) == "truncated"


def test_empty_text_and_random_bytes(product_jpeg):
    assert reject_reason(b"") == "empty"
    assert reject_reason(b"size chart: S M L XL\n") == "not-an-image"
    assert reject_reason(np.random.default_rng(0).bytes(4096)) == "not-an-image"


def test_known_but_unsupported_formats_say_so(photo):
    assert reject_reason(encode(photo.resize((64, 64)), "ICO")) == "unsupported"
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"/>'
    assert reject_reason(svg) == "unsupported"
    with pytest.raises(ImageRejected, match="ICO images are not supported"):
        decode_image(encode(photo.resize((32, 32)), "ICO"))


def test_our_pixel_limit_is_checked_from_the_header(product_jpeg):
    # 9000 x 9000 = 81 M pixels: under Pillow's own warning level, over our 64 M default.
    with pytest.raises(ImageRejected, match="limit of 64,000,000") as caught:
        decode_image(png_bomb(9000))
    assert caught.value.reason == "too-large"
    assert reject_reason(product_jpeg, max_pixels=60 * 80 - 1) == "too-large"
    assert decode_image(product_jpeg, max_pixels=60 * 80).size == (60, 80)


def test_decompression_bomb_is_rejected_cheaply(tmp_path):
    """A 20000 x 20000 PNG (1.2 GB as RGB) is rejected fast and without the memory."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    script = textwrap.dedent(f"""
        import json, resource, time
        from lookalike.catalogue.images import decode_image
        from lookalike.errors import ImageRejected
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        try:
            decode_image({str(bomb)!r})
            reason = None
        except ImageRejected as error:
            reason = error.reason
        print(json.dumps({{"reason": reason, "seconds": time.perf_counter() - started,
            "grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}}))
    """)
    result = json.loads(subprocess.run([sys.executable, "-c", script], check=True,
                                       capture_output=True, text=True).stdout)
    assert result["reason"] == "too-large"
    assert result["seconds"] < 1.0
    assert result["grew_kb"] < 50_000, result  # far from the 1.2 GB a decode would take


def test_decode_from_path_and_missing_file(tmp_path, product_jpeg):
    path = tmp_path / "photo.jpg"
    path.write_bytes(product_jpeg)
    assert decode_image(path).size == (60, 80)
    assert decode_image(str(path)).size == (60, 80)
    with pytest.raises(ImageRejected) as caught:
        decode_image(tmp_path / "gone.jpg")
    assert caught.value.reason == "missing" and "gone.jpg" in str(caught.value)


def test_image_info_reads_only_the_header(product_jpeg):
    assert image_info(product_jpeg) == ("JPEG", 60, 80)
    assert image_info(png_bomb(9000)) == ("PNG", 9000, 9000)  # no decode, so no bomb
    with pytest.raises(ImageRejected) as caught:  # beyond even Pillow's own limit
        image_info(png_bomb())
    assert caught.value.reason == "too-large"
    with pytest.raises(ImageRejected):
        image_info(b"")


def test_sha256_hex(product_jpeg):
    assert sha256_hex(product_jpeg) == hashlib.sha256(product_jpeg).hexdigest()
    assert len(sha256_hex(b"")) == 64


def test_pillow_globals_untouched(product_jpeg):
    limit = Image.MAX_IMAGE_PIXELS
    decode_image(product_jpeg)
    with pytest.raises(ImageRejected):
        decode_image(product_jpeg[:500])
    assert Image.MAX_IMAGE_PIXELS == limit and ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert DEFAULT_MAX_PIXELS == 64_000_000
