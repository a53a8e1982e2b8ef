"""Every upload case of DESIGN.md section 8 for images: a clear message or a clean RGB image."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from components.images import MAX_PIXELS, WORK_SIDE, InputError, load_image, square_thumbnail, to_model_input
from tests.conftest import encode


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` but carries no pixel data (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def png_rgb16(arr: np.ndarray) -> bytes:
    """A real 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def refused(data: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_image(data, "x")


def test_valid_jpeg_is_rgb(rgb_image):
    loaded = load_image(encode(rgb_image, "JPEG"), "a.jpg")
    assert loaded.image.mode == "RGB" and loaded.image.size == (64, 48) and loaded.notes == ()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "GIF"])
def test_other_formats(rgb_image, fmt):
    assert load_image(encode(rgb_image, fmt)).image.mode == "RGB"


def test_empty_file():
    refused(b"", "empty")


def test_not_an_image():
    refused(b"this is a text file, not a picture\n" * 10, "not an image")


def test_truncated_jpeg(rgb_image):
    data = encode(rgb_image.resize((256, 256)), "JPEG")
    refused(data[: len(data) // 2], "truncated or corrupt")


def test_decompression_bomb_header_is_refused_before_decoding():
    refused(png_header_only(100_000, 100_000), "decompression bomb")


def test_real_decompression_bomb():
    side = int(np.sqrt(MAX_PIXELS)) + 100  # a few KB of PNG that decodes to 40+ million pixels
    data = encode(Image.new("L", (side, side)), "PNG")
    assert len(data) < 200_000
    refused(data, "megapixels")


def test_huge_dimensions():
    refused(png_header_only(20_000, 1_000), "pixels a side|aspect")


def test_extreme_aspect_ratio():
    refused(encode(Image.new("RGB", (2_000, 20)), "PNG"), "aspect ratio")


def test_huge_but_allowed_image_is_shrunk():
    loaded = load_image(encode(Image.new("RGB", (3_000, 2_000), "red"), "JPEG"))
    assert max(loaded.image.size) == WORK_SIDE


def test_sixteen_bit_png():
    arr = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    loaded = load_image(encode(Image.fromarray(arr), "PNG"))
    out = np.asarray(loaded.image)
    assert loaded.image.mode == "RGB" and out.max() == 255 and out.min() == 0
    assert any("16-bit" in n for n in loaded.notes)


def test_cmyk_jpeg(rgb_image):
    loaded = load_image(encode(rgb_image.convert("CMYK"), "JPEG"))
    assert loaded.image.mode == "RGB" and any("CMYK" in n for n in loaded.notes)


def test_palette_png(rgb_image):
    loaded = load_image(encode(rgb_image.convert("P"), "PNG"))
    assert loaded.image.mode == "RGB"


def test_palette_with_transparency_is_flattened_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    loaded = load_image(encode(img, "PNG", transparency=0))
    assert np.asarray(loaded.image)[0, 0].tolist() == [255, 255, 255]
    assert any("Transparent" in n for n in loaded.notes)


def test_alpha_is_flattened_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    loaded = load_image(encode(img, "PNG"))
    assert np.asarray(loaded.image)[0, 0].tolist() == [255, 255, 255]


def test_grayscale(rgb_image):
    loaded = load_image(encode(rgb_image.convert("L"), "PNG"))
    arr = np.asarray(loaded.image)
    assert loaded.image.mode == "RGB" and (arr[..., 0] == arr[..., 2]).all()
    assert any("Grayscale" in n for n in loaded.notes)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    loaded = load_image(data)
    assert np.asarray(loaded.image)[0, 0, 0] > 200  # red
    assert any("3 frames" in n for n in loaded.notes)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_does_not_break_loading(rgb_image):
    data = encode(rgb_image, "JPEG")
    # an APP1 segment that claims to be EXIF but holds garbage, right after the SOI marker
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xff" + b"\x00" * 8
    broken = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    loaded = load_image(broken)
    assert loaded.image.mode == "RGB"


def test_sixteen_bit_rgb_png():
    arr = np.zeros((8, 8, 3), np.uint16)
    arr[..., 0] = 65535  # pure red at 16 bits per channel
    loaded = load_image(png_rgb16(arr))
    assert loaded.image.mode == "RGB" and np.asarray(loaded.image)[0, 0].tolist() == [255, 0, 0]


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    loaded = load_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert loaded.image.size == (20, 40)
    assert any("EXIF" in n for n in loaded.notes)


def test_model_input_shape_and_normalisation(rgb_image):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = to_model_input(rgb_image, size=32, mean=mean, std=std)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    expected = (np.asarray(square_thumbnail(rgb_image, 32), np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
