"""Every upload case of DESIGN.md section 8 for images: a clear message or a clean RGB image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from app.inputs import EXAMPLES, example_array
from components.images import MAX_BYTES, MAX_PIXELS, WORK_SIDE, InputError, load_image, square_thumbnail, to_model_input
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


@pytest.mark.parametrize(("mode", "key"), [("RGB", (0, 0, 0)), ("L", 0)])
def test_a_colour_marked_transparent_is_flattened_on_white(mode, key):
    """A PNG without alpha can mark one colour transparent (tRNS): those pixels are filled with
    white like any other transparency, not shown in their key colour."""
    img = Image.new(mode, (8, 8), key)
    img.paste(Image.new(mode, (4, 8), (200, 0, 0) if mode == "RGB" else 200), (4, 0))
    loaded = load_image(encode(img, "PNG", transparency=key))
    arr = np.asarray(loaded.image)
    assert arr[0, 0].tolist() == [255, 255, 255]  # the transparent colour
    assert arr[0, 7].tolist() == ([200, 0, 0] if mode == "RGB" else [200, 200, 200])  # an opaque pixel as it was
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
    assert any("first frame" in n for n in loaded.notes)


def test_an_animation_cut_off_after_its_first_frame_still_loads():
    """Asking whether a GIF is animated reads into its second frame; a file cut there (an
    interrupted download) still has an intact first frame, which is used, with a note."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    first = np.asarray(load_image(data).image)

    def breaks_is_animated(cut: int) -> bool:
        try:
            _ = Image.open(io.BytesIO(data[:cut])).is_animated
        except Exception:
            return True
        return False

    cuts = [cut for cut in range(len(data) // 3, len(data), 97) if breaks_is_animated(cut)]
    assert len(cuts) >= 5  # the case exists: Pillow raises on these cuts
    for cut in cuts:
        loaded = load_image(data[:cut])
        assert (np.asarray(loaded.image) == first).all()
        assert any("later frames are damaged" in n for n in loaded.notes)


def test_a_header_claiming_billions_of_frames_is_not_read_frame_by_frame():
    """An APNG whose animation control chunk claims 2**31 - 1 frames: the note does not repeat
    the claim, and the first frame is used."""
    png = encode(Image.new("RGB", (16, 16), "red"), "PNG")
    claims = png[:33] + png_chunk(b"acTL", struct.pack(">II", 2**31 - 1, 0)) + png[33:]
    loaded = load_image(claims)
    assert np.asarray(loaded.image)[0, 0].tolist() == [255, 0, 0]
    assert any("first frame" in n for n in loaded.notes) and not any("2147483" in n for n in loaded.notes)


def test_metadata_too_large_to_read_safely_gets_its_own_message():
    png = encode(Image.new("RGB", (16, 16), "red"), "PNG")
    profile = png_chunk(b"iCCP", b"prof\x00\x00" + zlib.compress(b"\x00" * (20 * 2**20), 9))
    refused(png[:33] + profile + png[33:], "metadata")


def test_a_tiny_picture_is_enlarged_with_a_note():
    loaded = load_image(encode(Image.new("RGB", (1, 1), "red"), "PNG"))
    assert loaded.image.size == (1, 1) and any("1x1 pixels" in n for n in loaded.notes)
    assert not any("small" in n for n in load_image(encode(Image.new("RGB", (32, 32)), "PNG")).notes)


def test_an_upload_over_the_size_limit_says_by_how_much():
    refused(b"\x00" * (MAX_BYTES + 1), f"{MAX_BYTES + 1:,} bytes, over the 25 MB limit")


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


def exif_with_bad_tag_type(img: Image.Image) -> bytes:
    """A JPEG whose EXIF says orientation 6 and whose Make tag's type is FLOAT instead of ASCII:
    Pillow decodes it, but rewriting the EXIF block (as ``exif_transpose`` does) fails."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0131] = 6, "Canon", "some software " * 3
    data = bytearray(encode(img, "JPEG", exif=exif.tobytes()))
    tiff = data.find(b"Exif\x00\x00") + 6
    order = "<" if data[tiff : tiff + 2] == b"II" else ">"
    ifd = tiff + struct.unpack(order + "I", data[tiff + 4 : tiff + 8])[0]
    for k in range(struct.unpack(order + "H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack(order + "H", data[entry : entry + 2])[0] == 0x010F:
            data[entry + 2 : entry + 4] = struct.pack(order + "H", 11)
    return bytes(data)


@pytest.mark.filterwarnings("ignore:Truncated File Read", "ignore:Metadata Warning")
def test_a_photo_with_a_damaged_exif_tag_is_kept_as_stored():
    loaded = load_image(exif_with_bad_tag_type(Image.new("RGB", (40, 20), "blue")))
    assert loaded.image.size == (40, 20)
    assert any("EXIF data is damaged" in n for n in loaded.notes)


def test_an_orientation_outside_the_eight_defined_is_not_reported_as_a_turn():
    exif = Image.Exif()
    exif[0x0112] = 9
    loaded = load_image(encode(Image.new("RGB", (40, 20), "blue"), "JPEG", exif=exif.tobytes()))
    assert loaded.image.size == (40, 20) and not any("upright" in n for n in loaded.notes)


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


@pytest.mark.parametrize("loader", [loader for loader, _ in EXAMPLES.values()])
def test_example_photos_are_scikit_images_own(loader):
    """The sidebar reads scikit-image's bundled photos with Pillow, without importing it."""
    import skimage.data

    assert np.array_equal(example_array(loader), np.asarray(getattr(skimage.data, loader)()))
