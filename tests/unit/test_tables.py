"""The test-set panels' HTML tables: what each row and cell says, and that text is escaped."""

from __future__ import annotations

import re

import numpy as np
import plotly.colors
import pytest

from components.figures import colour_scale
from components.tables import dark, make_share_bars, make_share_grid, shares


def test_share_bars_have_a_row_per_label_with_its_bar_length_and_percentage():
    html = make_share_bars(
        ["exit 1", "exit 2", "exit 3"], [0.5, 0.375, 0.125], colour="#ff7f0e", tip="{label}: {percent:.1f}%"
    )
    assert re.findall(r"width:([\d.]+)%;min-width", html) == ["50.00", "37.50", "12.50"]
    tiny = make_share_bars(["a", "b"], [0.001, 0.0], colour="#ff7f0e", tip="{label}")
    assert re.findall(r"min-width:(\d)px", tiny) == ["1", "0"]  # a share that is not 0 shows
    assert re.findall(r">(\d+)%</td>", html) == ["50", "38", "12"]
    assert re.findall(r'title="([^"]+)"', html) == ["exit 1: 50.0%", "exit 2: 37.5%", "exit 3: 12.5%"]


def test_share_bars_need_a_share_for_every_label():
    with pytest.raises(ValueError):
        make_share_bars(["exit 1", "exit 2"], [1.0], colour="#ff7f0e", tip="{label}")


def test_share_grid_shades_each_cell_on_the_scale_and_prints_its_percentage():
    shares = np.array([[1.0, 0.0], [0.25, 0.75]])
    html = make_share_grid(["cat", "dog"], ["exit 1", "exit 2"], shares, tip="{row} at {column}: {percent:.0f}%")
    cells = re.findall(r'<td title="([^"]+)" style="[^"]*background:([^;]+);color:([^"]+)">(\d+)</td>', html)
    assert [(title, int(text)) for title, _, _, text in cells] == [
        ("cat at exit 1: 100%", 100), ("cat at exit 2: 0%", 0), ("dog at exit 1: 25%", 25), ("dog at exit 2: 75%", 75),
    ]  # fmt: skip
    scale, rgb = colour_scale("Blues"), plotly.colors.unlabel_rgb
    fills = [rgb(fill) for _, fill, _, _ in cells]
    assert (fills[0], fills[1]) == (rgb(scale[-1][1]), rgb(scale[0][1]))  # 100 % and 0 %: the scale's two ends
    assert sum(fills[1]) > sum(fills[2]) > sum(fills[3]) > sum(fills[0])  # darker as the share grows
    assert [text for _, _, text, _ in cells] == ["#fff", "#000", "#000", "#fff"]  # white on the dark cells only
    assert re.findall(r"<th[^>]*>([^<]*)</th>", html) == ["", "exit 1", "exit 2", "cat", "dog"]


def test_shares_out_of_range_are_drawn_clipped_but_printed_as_they_are():
    bars = make_share_bars(["over", "under"], [1.2, -0.1], colour="#ff7f0e", tip="{label}")
    assert re.findall(r"width:([\d.]+)%;min-width", bars) == ["100.00", "0.00"]
    assert re.findall(r">(-?\d+)%</td>", bars) == ["120", "-10"]
    grid = make_share_grid(["a"], ["over", "one"], np.array([[1.5, 1.0]]), tip="{row}")
    fills = re.findall(r"background:([^;]+);", grid)
    assert fills[0] == fills[1] and re.findall(r">(\d+)</td>", grid) == ["150", "100"]


def test_shares_of_counts_per_row_and_a_row_of_zeros():
    assert shares([1, 3]).tolist() == [0.25, 0.75]
    assert shares([[2, 2], [0, 0]]).tolist() == [[0.5, 0.5], [0.0, 0.0]]


def test_share_grid_needs_a_share_for_every_cell():
    with pytest.raises(ValueError):
        make_share_grid(["cat", "dog"], ["exit 1"], np.ones((2, 2)), tip="{row}")


def test_table_text_is_escaped():
    bars = make_share_bars(["<b>exit</b>"], [1.0], colour="#ff7f0e", tip='"{label}"')
    grid = make_share_grid(["a&b"], ["<i>"], np.ones((1, 1)), tip="{row}")
    assert "<b>" not in bars and "&lt;b&gt;exit&lt;/b&gt;" in bars and 'title="&quot;' in bars
    assert "<i>" not in grid and "a&amp;b" in grid


def test_dark_fills_take_white_text():
    assert dark("rgb(8, 48, 107)") and dark("rgb(0, 0, 0)")
    assert not dark("rgb(247, 251, 255)") and not dark("rgb(255, 255, 255)")
