"""HTML tables for the small charts of the test-set panels that change on every slider move: a
bar per row (where the test images leave the early-exit network, how many gated blocks they
ran) and a shaded grid (class by exit, class by block). Pure: data in, HTML out, for
``st.html``.

Why not plotly: Streamlit keys a chart by its figure, so a chart whose figure changes is drawn
anew in the browser, axes, text measurements and all, on every 0.01 of a threshold. These need
no axes, zoom or legend; as tables they cost the browser a table's layout. How much that saved
on the early-exit page (stop 23, back to back with the charts) is in HISTORY.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np
import plotly.colors
from numpy.typing import ArrayLike

from components.figures import colour_scale

SCALE = "Blues"  # the grid's shades, 0 to 1, as the class heatmaps' on the other pages
TABLE = "width:100%;border-collapse:collapse;font-size:0.875rem;line-height:1.6"
CELL = "padding:1px 6px;white-space:nowrap"


def shares(counts: ArrayLike) -> np.ndarray:
    """Counts as shares of their row (the last axis); a row of zeros stays zeros."""
    counts = np.asarray(counts, dtype=float)
    return counts / counts.sum(-1, keepdims=True).clip(min=1)


def make_share_bars(labels: Sequence[str], values: Sequence[float], *, colour: str, tip: str) -> str:
    """One row per label: the label, a bar as long as its share (0-1) of the row's width (at
    least a pixel when the share is not 0, clipped to the cell), the percentage. ``tip``: each
    row's tooltip, a format string of ``label`` and ``percent``."""
    rows = ""
    for label, share in zip(labels, values, strict=True):
        width = min(max(share, 0.0), 1.0)
        rows += (
            f'<tr title="{escape(tip.format(label=label, percent=100 * share))}">'
            f'<td style="{CELL}">{escape(label)}</td>'
            f'<td style="{CELL};width:100%"><div style="width:{100 * width:.2f}%;min-width:{int(width > 0)}px;'
            f'height:0.9em;background:{colour}"></div></td>'
            f'<td style="{CELL};text-align:right">{100 * share:.0f}%</td></tr>'
        )
    return f'<table style="{TABLE}">{rows}</table>'


def make_share_grid(rows: Sequence[str], columns: Sequence[str], values: ArrayLike, *, tip: str) -> str:
    """A grid of shares (0-1, ``(len(rows), len(columns))``), each cell shaded on :data:`SCALE`
    (clipped to 0-1) and labelled with its percentage. ``tip``: each cell's tooltip, a format
    string of ``row``, ``column`` and ``percent``."""
    values = np.asarray(values, dtype=float)
    if values.shape != (len(rows), len(columns)):
        raise ValueError(f"{values.shape} shares for {len(rows)} rows and {len(columns)} columns")
    # each cell's (r, g, b) in 0-255, as plotly's "rgb" output rounds them, kept as numbers for
    # the text colour: parsing each "rgb(...)" string back was most of what a grid cost (stop 23)
    shades = plotly.colors.sample_colorscale(colour_scale(SCALE), values.clip(0, 1).ravel().tolist(), colortype="tuple")
    rgbs = [plotly.colors.convert_to_RGB_255(shade) for shade in shades]
    head = "".join(f'<th style="{CELL};text-align:center">{escape(c)}</th>' for c in columns)
    body = ""
    for i, row in enumerate(rows):
        cells = ""
        for j, column in enumerate(columns):
            rgb = rgbs[i * len(columns) + j]
            fill, text = plotly.colors.label_rgb(rgb), "#fff" if dark(rgb) else "#000"
            title = escape(tip.format(row=row, column=column, percent=100 * values[i, j]))
            cells += (
                f'<td title="{title}" style="{CELL};text-align:center;background:{fill};color:{text}">'
                f"{100 * values[i, j]:.0f}</td>"
            )
        body += f'<tr><th style="{CELL};text-align:right;font-weight:normal">{escape(row)}</th>{cells}</tr>'
    return f'<table style="{TABLE}"><tr><th></th>{head}</tr>{body}</table>'


def dark(colour: str | tuple[float, float, float]) -> bool:
    """Whether text on this fill (``rgb(r, g, b)`` or (r, g, b), in 0-255) reads better white
    than black (relative luminance under 0.4, WCAG's weights, gamma left out: a threshold, not a
    contrast ratio)."""
    r, g, b = (c / 255 for c in (plotly.colors.unlabel_rgb(colour) if isinstance(colour, str) else colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.4
