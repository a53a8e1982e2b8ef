"""Any model's own picture and headline decision from one trace, for the views that take every
registered model (Compare, Video). Pure: a trace (and the image) in, a figure or image out.

Each mechanism is recognised by what its trace records (an early exit's ``fired_exit``, a
pixel mask's ``masks``, a gate's ``gate_probs``, a token set's ``tokens_attn``); a trace of
none of these gets the generic picture, its units' executed FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from components.figures import RAN, SKIPPED, axis, make_block_path, make_exit_strip, make_figure, series
from components.overlays import make_compute_count, make_heat_overlay, make_pruned_map, make_token_map
from models.core import Trace


@dataclass(frozen=True)
class Decision:
    """A trace's headline decision: what it is called, its value, and how to say it."""

    label: str
    value: float
    text: str


def decision_of(trace: Trace) -> Decision:
    """The one number that says what this run decided (plotted per frame on the Video page)."""
    ex = trace.extras
    if "fired_exit" in ex:
        k = ex["fired_exit"] + 1
        return Decision("exit that fired", k, f"exit {k} of {ex['num_exits']}")
    if "masks" in ex:
        share = 100 * float(np.mean(ex["conv_density"]))
        return Decision("% of conv FLOPs computed", share, f"{share:.0f}% of the masked blocks' conv FLOPs")
    if "gate_probs" in ex:
        ran = sum(ex["executed"])
        return Decision("blocks run", ran, f"{ran} of {len(ex['executed'])} blocks ran")
    if "tokens_attn" in ex:
        left = ex["tokens_mlp"][ex["reduce_at"][-1]] - 1  # patch tokens after the last reduction
        return Decision("tokens left", left, f"{left} of {ex['grid'] ** 2} patch tokens left")
    ran = sum(u.executed for u in trace.units)
    return Decision("units run", ran, f"{ran} of {len(trace.units)} units ran")


def mechanism_picture(trace: Trace, image: Image.Image, classes: Sequence[str]) -> go.Figure | Image.Image:
    """The picture a model's own page draws first, for any trace. ``image``: the input as a
    square whose side is a multiple of 16 (the maps' grids)."""
    ex = trace.extras
    if "fired_exit" in ex:
        return make_exit_strip(trace, classes)
    if "masks" in ex:
        return make_compute_map(trace, image)
    if "gate_probs" in ex:
        return make_block_path(trace)
    if "tokens_attn" in ex:
        return make_final_tokens(trace, image)
    return make_unit_flops(trace)


def make_compute_map(trace: Trace, image: Image.Image) -> Image.Image:
    """A pixel-mask trace as one image: per pixel, how many of the masked blocks computed it."""
    masks = trace.extras["masks"]
    if any(m is None for m in masks):  # masks off: every block computed every position
        masks = [np.ones((2, 2), bool)] * len(masks)
    return make_heat_overlay(image, make_compute_count(masks, image.size[0]), vmax=len(masks))


def make_final_tokens(trace: Trace, image: Image.Image) -> Image.Image:
    """A token trace's patches after its last reducing block (every patch when none reduce)."""
    ex = trace.extras
    last = ex["reduce_at"][-1]
    if trace.knobs["mode"] == "prune":
        return make_pruned_map(image, ex["kept"][last])
    return make_token_map(image, ex["groups"][last], ex["token_sizes"][last])


def make_unit_flops(trace: Trace) -> go.Figure:
    """Every unit's executed MFLOPs against what the static network spends there."""
    names = [u.name for u in trace.units]
    data = [
        series("bar", x=names, y=[u.full_flops / 1e6 for u in trace.units], name="static", marker={"color": SKIPPED}),
        series("bar", x=names, y=[u.flops / 1e6 for u in trace.units], name="executed", marker={"color": RAN}),
    ]
    return make_figure(data, height=280, margin={"l": 70, "t": 16, "b": 110}, showlegend=True, barmode="overlay",
                       legend={"orientation": "h", "y": -0.45}, yaxis=axis("MFLOPs"))  # fmt: skip
