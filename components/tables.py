"""HTML tables for the small charts of a test-set panel that change on every slider move: a bar
per row (where the test images leave) and a shaded grid (class by exit). Pure: data in, HTML
out, for ``st.html``.

Why not plotly: Streamlit keys a chart by its figure, so a chart whose figure changes is drawn
anew in the browser, axes, text measurements and all, on every 0.01 of a threshold. These two
need no axes, zoom or legend; as tables they cost the browser a table's layout. On the
early-exit page (stop 23, two cold pages of 15 moves per variant, alternating), slider release
to the page settled went from 430 and 448 ms (medians) with the two plotly charts to 287 and
321 ms with these tables; the confidence figure above them, drawn first, moved less than the
runs' spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np
import plotly.colors

from components.figures import colour_scale

TABLE = "width:100%;border-collapse:collapse;font-size:0.875rem;line-height:1.6"
CELL = "padding:1px 6px;white-space:nowrap"


def make_share_bars(labels: Sequence[str], shares: Sequence[float], *, colour: str, tip: str) -> str:
    """One row per label: the label, a bar as long as its share (0-1) of the row's width (at
    least a pixel when the share is not 0), the percentage. ``tip``: each row's tooltip, a format string of ``label`` and ``percent``."""
    rows = "".join(
        f'<tr title="{escape(tip.format(label=label, percent=100 * share))}">'
        f'<td style="{CELL}">{escape(label)}</td>'
        f'<td style="{CELL};width:100%"><div style="width:{100 * share:.2f}%;min-width:{int(share > 0)}px;'
        f'height:0.9em;background:{colour}"></div></td>'
        f'<td style="{CELL};text-align:right">{100 * share:.0f}%</td></tr>'
        for label, share in zip(labels, shares, strict=True)
    )
    return f'<table style="{TABLE}">{rows}</table>'


def make_share_grid(
    rows: Sequence[str], columns: Sequence[str], shares: np.ndarray, *, tip: str, scale: str = "Blues"
) -> str:
    """A grid of shares (0-1, ``(len(rows), len(columns))``), each cell shaded on the colour
    ``scale`` (0 to 1) and labelled with its percentage. ``tip``: each cell's tooltip, a format
    string of ``row``, ``column`` and ``percent``."""
    shares = np.asarray(shares, dtype=float)
    if shares.shape != (len(rows), len(columns)):
        raise ValueError(f"{shares.shape} shares for {len(rows)} rows and {len(columns)} columns")
    fills = plotly.colors.sample_colorscale(colour_scale(scale), shares.clip(0, 1).ravel().tolist())
    head = "".join(f'<th style="{CELL};text-align:center">{escape(c)}</th>' for c in columns)
    body = ""
    for i, row in enumerate(rows):
        cells = ""
        for j, column in enumerate(columns):
            fill = fills[i * len(columns) + j]
            text = "#fff" if dark(fill) else "#000"
            title = escape(tip.format(row=row, column=column, percent=100 * shares[i, j]))
            cells += (
                f'<td title="{title}" style="{CELL};text-align:center;background:{fill};color:{text}">'
                f"{100 * shares[i, j]:.0f}</td>"
            )
        body += f'<tr><th style="{CELL};text-align:right;font-weight:normal">{escape(row)}</th>{cells}</tr>'
    return f'<table style="{TABLE}"><tr><th></th>{head}</tr>{body}</table>'


def dark(colour: str) -> bool:
    """Whether text on this ``rgb(r, g, b)`` fill reads better white than black (relative
    luminance under 0.4, WCAG's weights, gamma left out: a threshold, not a contrast ratio)."""
    r, g, b = (c / 255 for c in plotly.colors.unlabel_rgb(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.4
