"""The Compare page's downloads: every configuration side by side as one PNG, drawn with
matplotlib (it needs no browser, unlike exporting plotly figures), and their traces as JSON.

Pure: panels in, PNG bytes out; configurations in, JSON text out.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from models.core import Trace

RAN, SKIPPED = "#1f77b4", "#d0d0d0"  # the figures' colours (components.figures)


@dataclass(frozen=True)
class Panel:
    """One configuration: a title, a few lines of numbers, its picture over the input (or the
    input itself) and its trace (whose units become the bar chart)."""

    title: str
    lines: tuple[str, ...]
    image: Image.Image
    trace: Trace


def comparison_json(input_name: str, configurations: Sequence[dict[str, Any]]) -> str:
    """Each configuration's numbers and its whole trace (``trace``: a :class:`Trace`). The trace
    carries the latency the page showed (``latency_ms``, the fastest of the repeated runs) in
    place of the one of the run that made it, so that the file gives one latency per
    configuration."""
    rows = [
        {**c, "trace": json.loads(replace(c["trace"], latency_ms=c["latency_ms"]).to_json())} for c in configurations
    ]
    return json.dumps({"input": input_name, "configurations": rows})


def make_comparison_png(panels: Sequence[Panel], *, dpi: int = 110) -> bytes:
    """One column per panel: title, picture, numbers, and executed vs static MFLOPs per unit."""
    n = len(panels)
    # a Figure of its own, not pyplot's: pyplot's global figure manager is not safe across the
    # threads Streamlit runs sessions in
    fig = Figure(figsize=(4.2 * n, 9.5))
    axes = fig.subplots(3, n, gridspec_kw={"height_ratios": [3.2, 1.2, 3]}, squeeze=False)
    for col, panel in enumerate(panels):
        top, text, bars = axes[0, col], axes[1, col], axes[2, col]
        top.imshow(panel.image)
        top.set_title(panel.title, fontsize=11, fontweight="bold")
        top.axis("off")
        text.axis("off")
        lines = [wrapped for line in panel.lines for wrapped in textwrap.wrap(line, 46, subsequent_indent="  ")]
        text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=9.5, family="monospace")
        units = list(reversed(panel.trace.units))
        names = [u.name for u in units]
        bars.barh(names, [u.full_flops / 1e6 for u in units], color=SKIPPED, label="static network")
        bars.barh(names, [u.flops / 1e6 for u in units], color=RAN, height=0.5, label="executed")
        bars.set_xlabel("MFLOPs per unit")
        bars.tick_params(axis="y", labelsize=7)
        if col == 0:
            bars.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()
