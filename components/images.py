"""Turning whatever a user uploads into a clean RGB image, and that image into model input.

Every failure raises :class:`InputError` with a message meant for the page; every fix-up
that changes what the user sent (alpha flattened, first GIF frame, EXIF rotation, 16-bit
rescaled, huge image shrunk) is reported as a note. Pure: no Streamlit here.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from models.data import to_tensor

MAX_BYTES = 25 * 1024 * 1024  # an upload larger than this is refused before decoding
MAX_PIXELS = 40_000_000  # below PIL's own bomb guard (89 MP warns, 179 MP refuses at open)
MAX_SIDE = 12_000
MAX_ASPECT = 20.0  # a 1x5000 strip would be a few pixels of content at 32x32
WORK_SIDE = 1024  # larger images are shrunk to this longest side right after decoding
TINY_SIDE = 32  # a picture with a side below this is enlarged for every model (their inputs are 32x32)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


class InputError(ValueError):
    """An upload the app cannot use; ``str(error)`` is the message shown on the page."""


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, at most WORK_SIDE on its longest side
    notes: tuple[str, ...]


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite on white: transparent pixels carry arbitrary colours underneath."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        depth = "16-bit" if "16" in mode else "high bit depth"
        notes.append(f"{depth} grayscale image: contrast-stretched (min to max) to 8 bits.")
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    # an alpha channel, or one colour marked transparent (a PNG's tRNS: palette, RGB or grayscale)
    if mode in ("RGBA", "LA", "PA") or (mode in ("P", "RGB", "L", "1") and "transparency" in img.info):
        notes.append("Transparent areas were filled with white.")
        return _flatten_alpha(img)
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB.")
    elif mode in ("L", "1"):
        notes.append("Grayscale image: the model sees three identical colour channels.")
    return img.convert("RGB")


def load_image(data: bytes, name: str = "upload") -> LoadedImage:
    """Decode an uploaded file into an RGB image, or raise :class:`InputError`.

    Args:
        data: the file's bytes.
        name: the file name, for messages only.
    """
    if not data:
        raise InputError(f"{name} is empty (0 bytes).")
    if len(data) > MAX_BYTES:
        raise InputError(f"{name} is {len(data):,} bytes, over the {MAX_BYTES // 2**20} MB limit.")
    notes: list[str] = []
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that; treat the warning as a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = img.size
            if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
                raise InputError(
                    f"{name} is {width}x{height} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels "
                    f"and {MAX_SIDE} pixels a side."
                )
            if max(width, height) / max(1, min(width, height)) > MAX_ASPECT:
                raise InputError(
                    f"{name} is {width}x{height}: too narrow to classify (aspect ratio over {MAX_ASPECT:.0f})."
                )
            _first_frame(img, notes)
            if img.format == "JPEG":
                img.draft("RGB", (WORK_SIDE, WORK_SIDE))  # decode large JPEGs at reduced size
            img = _upright(img, notes)
            img.load()
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(
                f"{name} claims more pixels than this app decodes (a corrupt header, or a decompression bomb)."
            ) from None
        except ValueError as err:
            if "MAX_TEXT_CHUNK" not in str(err) and "text chunks" not in str(err):  # MAX_TEXT_MEMORY's too
                raise InputError(f"{name} could not be decoded (truncated or corrupt file): {err}") from None
            raise InputError(
                f"{name} carries metadata (a colour profile or text) larger than the 1 MB Pillow reads safely; "
                "save the picture again without its metadata."
            ) from None
        except UnidentifiedImageError:
            raise InputError(f"{name} is not an image this app reads ({', '.join(EXTENSIONS)}).") from None
        except MemoryError:
            raise InputError(f"{name} is too large to decode in memory.") from None
        except Exception as err:  # Pillow's plugins raise many types on corrupt data; none may reach the page
            raise InputError(f"{name} could not be decoded (truncated or corrupt file): {err}") from None
    rgb = _to_rgb(img, notes)
    if min(rgb.size) < TINY_SIDE:
        notes.append(f"A very small picture ({rgb.width}x{rgb.height} pixels): the models see it enlarged.")
    if max(rgb.size) > WORK_SIDE:
        rgb.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.LANCZOS)
    return LoadedImage(rgb, tuple(notes))


def _first_frame(img: Image.Image, notes: list[str]) -> None:
    """Use the first frame of an animation or multi-picture file, with a note. Asks
    ``is_animated``, not ``n_frames``: that reads every frame, and a header may claim 2**31."""
    try:
        animated = getattr(img, "is_animated", False)
        note = "Animated or multi-picture image: using its first frame."
    except Exception:  # a damaged later frame: the first one may still decode
        animated, note = True, "The file's later frames are damaged: using its first frame."
    if animated:
        notes.append(note)
        img.seek(0)


def _upright(img: Image.Image, notes: list[str]) -> Image.Image:
    """The image turned as its EXIF orientation says (2-8; other values mean nothing). A broken
    EXIF block is not worth refusing a photo for: then it is kept as stored, with a note."""
    try:
        orientation = img.getexif().get(0x0112)
        upright = ImageOps.exif_transpose(img)  # also rewrites the EXIF block, which can fail
    except Exception:
        notes.append("The photo's EXIF data is damaged: it is shown as stored, not turned by its orientation.")
        return img
    if orientation in range(2, 9):
        notes.append("Turned upright using the photo's EXIF orientation.")
    return upright


def square_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (what a 32x32 model sees)."""
    return ImageOps.fit(img, (size, size), Image.Resampling.LANCZOS)


def to_model_input(img: Image.Image, *, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """An RGB image -> normalised ``(1, 3, size, size)`` tensor (the card's preprocessing)."""
    return to_tensor(np.asarray(square_thumbnail(img, size))[None], mean, std)
