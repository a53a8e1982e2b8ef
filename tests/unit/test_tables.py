"""The test-set panels' HTML tables: what each row and cell says, and that text is escaped."""

from __future__ import annotations

import re

import numpy as np
import plotly.colors
import pytest

from components.figures import colour_scale
from components.tables import dark, make_share_bars, make_share_grid


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
    scale = colour_scale("Blues")
    fills = [fill for _, fill, _, _ in cells]
    assert fills == plotly.colors.sample_colorscale(scale, [1.0, 0.0, 0.25, 0.75])
    rgb = plotly.colors.unlabel_rgb
    assert (rgb(fills[0]), rgb(fills[1])) == (rgb(scale[-1][1]), rgb(scale[0][1]))  # the scale's two ends
    assert [text for _, _, text, _ in cells] == ["#fff", "#000", "#000", "#fff"]  # white on the dark cells only
    assert re.findall(r"<th[^>]*>([^<]*)</th>", html) == ["", "exit 1", "exit 2", "cat", "dog"]


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
