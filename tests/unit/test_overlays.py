"""The patch overlays: each tint covers exactly its patch, groups share a colour, dropped and
pruned patches are dark, untouched patches keep their pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from components.overlays import (
    GONE,
    GRID_LINE,
    expert_colour,
    make_expert_map,
    make_patch_grid,
    make_pruned_map,
    make_token_map,
    tint_patches,
)

SIDE, GRID = 64, 8
CELL = SIDE // GRID


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def cell(picture: Image.Image, row: int, col: int) -> np.ndarray:
    """A patch's pixels without its grid line (first row and column of the cell)."""
    arr = np.asarray(picture)
    return arr[row * CELL + 1 : (row + 1) * CELL - 1, col * CELL + 1 : (col + 1) * CELL - 1]


def test_alpha_zero_keeps_the_pixels_and_draws_the_grid(image):
    out = make_patch_grid(image, GRID)
    assert out.size == image.size
    for r, c in [(0, 0), (3, 5), (7, 7)]:
        assert np.array_equal(cell(out, r, c), cell(image, r, c))
    arr = np.asarray(out)
    assert (arr[::CELL, :] == GRID_LINE).all() and (arr[:, ::CELL] == GRID_LINE).all()


def test_a_full_tint_fills_exactly_its_patch(image):
    colours = np.zeros((GRID, GRID, 3), dtype=np.uint8)
    colours[2, 6] = (10, 200, 30)
    alpha = np.zeros((GRID, GRID))
    alpha[2, 6] = 1.0
    out = tint_patches(image, colours, alpha)
    assert (cell(out, 2, 6) == (10, 200, 30)).all()
    assert np.array_equal(cell(out, 2, 5), cell(image, 2, 5)) and np.array_equal(cell(out, 3, 6), cell(image, 3, 6))


def test_pruned_patches_are_dark_and_kept_ones_untouched(image):
    kept = np.ones((GRID, GRID), dtype=bool)
    kept[0, :3] = False
    out = make_pruned_map(image, kept)
    dark = cell(out, 0, 1).astype(float)
    assert np.abs(dark - GONE).mean() < np.abs(cell(image, 0, 1).astype(float) - GONE).mean()
    assert np.array_equal(cell(out, 4, 4), cell(image, 4, 4))


def test_merged_patches_share_one_colour_and_groups_differ():
    flat = Image.new("RGB", (SIDE, SIDE), (128, 128, 128))
    groups = np.arange(GRID * GRID).reshape(GRID, GRID)
    groups[0, 1] = groups[0, 0]  # one merge group of two patches
    groups[5, 5] = groups[7, 0]  # another
    sizes = np.ones((GRID, GRID), dtype=int)
    sizes[groups == groups[0, 0]] = 2
    sizes[groups == groups[7, 0]] = 2
    out = make_token_map(flat, groups, sizes)
    a, b = cell(out, 0, 0)[0, 0], cell(out, 0, 1)[0, 0]
    c, d = cell(out, 5, 5)[0, 0], cell(out, 7, 0)[0, 0]
    assert (a == b).all() and (c == d).all() and not (a == c).all()
    assert (cell(out, 3, 3) == 128).all()  # a token of its own stays as it is


def test_expert_map_colours_each_patch_by_its_expert_and_dropped_dark():
    flat = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    experts = np.zeros((GRID, GRID), dtype=int)
    experts[1, 1], experts[2, 2] = 3, -1
    out = make_expert_map(flat, experts)
    tinted = cell(out, 1, 1)[0, 0].astype(int)
    towards = np.array(expert_colour(3)) - 255
    assert (np.sign(tinted - 255) == np.sign(towards)).all()  # pulled towards expert 4's colour
    assert not (cell(out, 0, 0)[0, 0] == cell(out, 1, 1)[0, 0]).all()
    assert cell(out, 2, 2).mean() < cell(out, 0, 0).mean()  # dropped: dark


def test_the_four_experts_have_far_apart_colours_named_in_the_legend():
    from components.overlays import expert_colour_names

    colours = np.array([expert_colour(e) for e in range(4)], dtype=float)
    gaps = [np.linalg.norm(colours[a] - colours[b]) for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 110  # experts 1 and 4 were orange and yellow: 96 apart
    assert expert_colour_names(4) == "expert 1 blue, expert 2 green, expert 3 pink, expert 4 yellow"
