"""Pictures over the input image: a patch grid tinted by what the model decided per patch.

Pure numpy/PIL (no Streamlit): an image and an ``(8, 8)`` decision grid in, an image out. The
grid cells are the transformer's patch tokens, so each tint covers exactly the pixels that
token was made of.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GRID_LINE = (255, 255, 255)
GONE = (60, 60, 60)  # a patch that is no longer a token of its own (pruned, or capacity-dropped)
# Distinct, colour-blind-safe-ish hues (Okabe-Ito first, then Tableau) for experts and merge groups
# 20 colours: merging 16 tokens a layer left up to 18 merged groups on one map (20 noise
# images), and with 12 colours groups repeated a colour, while the caption says one colour is
# one token
PALETTE = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (148, 103, 189), (140, 86, 75), (188, 189, 34), (23, 190, 207), (227, 119, 194),
    (128, 0, 0), (0, 0, 128), (0, 128, 128), (128, 128, 0), (60, 180, 75), (220, 190, 255), (255, 215, 180),
    (70, 70, 70),
)  # fmt: skip


# The experts' own four, named for the captions: far apart in hue, and only one (yellow) near the
# orange and brown of a typical photo (the shared palette's orange and yellow, experts 1 and 4
# before, were hard to tell apart over an orange cat). Okabe-Ito's blue, pink and yellow, and a
# green darker than its bluish green, which sat too close to its blue.
EXPERT_PALETTE = (
    ("blue", (0, 114, 178)),
    ("green", (0, 140, 60)),
    ("pink", (204, 121, 167)),
    ("yellow", (240, 228, 66)),
)


def group_colour(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def expert_colour(e: int) -> tuple[int, int, int]:
    return EXPERT_PALETTE[e % len(EXPERT_PALETTE)][1]


def expert_colour_names(num_experts: int) -> str:
    """ "expert 1 blue, expert 2 green, ...": the maps' legend in words."""
    return ", ".join(f"expert {e + 1} {EXPERT_PALETTE[e % len(EXPERT_PALETTE)][0]}" for e in range(num_experts))


def _cells(values: np.ndarray, size: int) -> np.ndarray:
    """``(G, G, ...)`` per patch -> ``(size, size, ...)`` per pixel (nearest)."""
    reps = size // values.shape[0]
    return values.repeat(reps, 0).repeat(reps, 1)


def tint_patches(image: Image.Image, colours: np.ndarray, alpha: np.ndarray, *, lines: bool = True) -> Image.Image:
    """Blend each patch of a square image with a colour.

    Args:
        image: square RGB image whose side is a multiple of the grid.
        colours: ``(G, G, 3)`` uint8 colour per patch.
        alpha: ``(G, G)`` blend weight per patch in [0, 1] (0 leaves the patch as it is).
        lines: draw the patch grid.
    """
    size = image.size[0]
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    a = _cells(alpha.astype(np.float32), size)[..., None]
    out = (1 - a) * base + a * _cells(colours.astype(np.float32), size)
    if lines:
        step = size // colours.shape[0]
        out[::step, :] = GRID_LINE
        out[:, ::step] = GRID_LINE
        out[-1, :] = GRID_LINE
        out[:, -1] = GRID_LINE
    return Image.fromarray(out.round().astype(np.uint8))


def make_patch_grid(image: Image.Image, grid: int) -> Image.Image:
    """The image under its patch grid: every patch its own token."""
    return tint_patches(image, np.zeros((grid, grid, 3), dtype=np.uint8), np.zeros((grid, grid)))


def make_token_map(image: Image.Image, groups: np.ndarray, sizes: np.ndarray) -> Image.Image:
    """Which patches are still tokens of their own after a reduction.

    A patch in a token of size 1 stays as it is. Patches sharing a larger token are tinted
    with one colour per token: a merge group (ToMe) or, when pruning, the one fused token
    (EViT) that every pruned patch went into, drawn dark.

    Args:
        groups: ``(G, G)`` the token index of each patch.
        sizes: ``(G, G)`` how many patches that token stands for.
    """
    shared = sizes > 1
    colours = np.zeros((*groups.shape, 3), dtype=np.uint8)
    ids = {g: k for k, g in enumerate(sorted(set(groups[shared].tolist())))}
    for g, k in ids.items():
        colours[groups == g] = group_colour(k)
    alpha = np.where(shared, 0.6, 0.0)
    return tint_patches(image, colours, alpha)


def make_pruned_map(image: Image.Image, kept: np.ndarray) -> Image.Image:
    """EViT's view: kept patches as they are, pruned ones (fused into one token) dark."""
    colours = np.broadcast_to(np.array(GONE, dtype=np.uint8), (*kept.shape, 3))
    return tint_patches(image, colours, np.where(kept, 0.0, 0.8))


def make_expert_map(image: Image.Image, experts: np.ndarray) -> Image.Image:
    """Each patch tinted by the expert its token went to, for one choice rank; ``-1`` (that
    choice dropped by the capacity limit) dark. A token dark on every rank's map skipped the MLP.

    Args:
        experts: ``(G, G)`` expert index per patch at one choice rank, -1 for dropped.
    """
    colours = np.array([expert_colour(e) if e >= 0 else GONE for e in experts.ravel()], dtype=np.uint8)
    return tint_patches(image, colours.reshape(*experts.shape, 3), np.where(experts >= 0, 0.55, 0.8))


def upsample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """An ``(h, h)`` per-position grid to ``(size, size)`` pixels (nearest; ``size`` a multiple of h)."""
    return _cells(np.asarray(mask), size)


def make_compute_count(masks: list[np.ndarray], size: int) -> np.ndarray:
    """``(size, size)``: per input pixel, how many blocks computed the position covering it."""
    return sum(upsample_mask(m.astype(np.int32), size) for m in masks)


def make_mask_overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """A block's spatial mask over the image: computed positions as they are, the others dark.
    ``mask``: ``(h, h)`` bool; the image is square with a side that is a multiple of h."""
    size = image.size[0]
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    keep = upsample_mask(mask, size)[..., None]
    out = np.where(keep, base, 0.2 * base + 0.8 * np.array(GONE, dtype=np.float32))
    return Image.fromarray(out.round().astype(np.uint8))


def make_heat_overlay(image: Image.Image, values: np.ndarray, *, vmax: float, alpha: float = 0.55) -> Image.Image:
    """A per-pixel quantity (compute count, attribution) over the image in the viridis colours.
    ``values``: ``(size, size)`` or coarser ``(h, h)`` (upsampled), 0 to ``vmax``."""
    from matplotlib import colormaps

    size = image.size[0]
    if values.shape[0] != size:
        values = np.asarray(Image.fromarray(values.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))
    scaled = np.clip(values / vmax, 0, 1) if vmax > 0 else np.zeros_like(values, dtype=float)
    colours = colormaps["viridis"](scaled)[..., :3] * 255
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray(((1 - alpha) * base + alpha * colours).round().astype(np.uint8))
