"""Pixels: where a spatially masked network computes, and whether that is where it looks."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

from app import state
from app.attribution import render_attribution_panel
from app.common import (
    checked_table,
    model_input,
    nearest_point,
    path_latency,
    render_knobs_or_static,
    render_model_page,
    render_prediction,
    render_seen_image,
    render_table_header,
    thumbnail,
)
from app.inputs import InputImage
from app.models_cache import load_model
from components.figures import block_label, make_accuracy_curve, make_block_density
from components.overlays import make_mask_overlay
from components.pictures import make_compute_map
from components.render import Timing, current_index, mflops_cell, render_cost_metrics, render_small_table
from models import available, model_class
from models.core import Trace

MODEL = "pixel_mask"
MAP_SIDE = 192  # pixels of each map: a multiple of every block's grid (16, 8, 4)


@st.cache_data(max_entries=256, show_spinner=False)
def mask_trace(name: str, key: str, threshold: float, _x: torch.Tensor) -> Trace:
    """One real batch-1 sparse forward pass per image and threshold."""
    return load_model(name).trace(_x, threshold=threshold)


@st.cache_data(max_entries=64, show_spinner=False)
def default_trace(name: str, key: str, _x: torch.Tensor) -> Trace:
    """Another model's run at its card's default knobs (for the attribution panel)."""
    return load_model(name).trace(_x)


def latency_of(trace: Trace, key: str, x: torch.Tensor) -> Timing:
    """Latency of the real run and of the dense network, measured once per set of masks."""
    masks = trace.extras["masks"]
    path = tuple(b"" if m is None else np.packbits(m).tobytes() for m in masks)
    return path_latency(trace.model, key, path, x, trace.knobs)[1]


def render_masks(trace: Trace, image: Image.Image) -> None:
    """Each block's mask over the image: computed positions as they are, the rest dark."""
    ex = trace.extras
    per_stage = ex["blocks_per_stage"]
    cols = st.columns(len(ex["masks"]))
    for i, (col, mask, density) in enumerate(zip(cols, ex["masks"], ex["conv_density"], strict=True)):
        size = load_model(MODEL).block_size(i)
        kept = np.ones((size, size), bool) if mask is None else mask
        col.image(make_mask_overlay(image, kept), width="stretch",
                  caption=f"{block_label(i, per_stage)} ({size}x{size}): {100 * kept.mean():.0f}% of positions, "
                  f"{100 * density:.0f}% of its conv FLOPs")  # fmt: skip


def render_dataset_panel(table: dict[str, Any], threshold: float, per_stage: int) -> None:
    point = nearest_point(table["points"], threshold)
    full = table["full"]
    render_table_header(MODEL, table, point, full_name="dense", full_title="Dense (every position)")
    st.caption(
        f"At this threshold the masked blocks ran {100 * point['conv_share']:.0f}% of their dense convolution FLOPs "
        "on average."
    )
    left, right = st.columns(2)
    with left:
        curve = {"masked": {"points": table["points"][1:], "static": [{**full, "label": "dense"}]}}
        st.plotly_chart(make_accuracy_curve(curve, current={"masked": (point["mflops"], point["accuracy"])}),
                        key="px_curve")  # fmt: skip
        st.caption("Line: the masks over the threshold sweep, a dot per threshold measured, dotted where no threshold "
                   "lands between two far apart. "
                   "Square: every position computed (the static network).")  # fmt: skip
    with right:
        st.plotly_chart(make_block_density(point, per_stage), key="px_density")
        st.caption("Which blocks compute how much, averaged over the test set at this threshold.")


def render_attribution(picked: InputImage, trace: Trace, x: torch.Tensor, image: Image.Image) -> None:
    st.subheader("Where it computes vs where it looks")
    names = available()
    name = st.selectbox(
        "Explain", names, index=current_index(state.ATTRIBUTION_MODEL, names, MODEL), key=state.ATTRIBUTION_MODEL,
        format_func=lambda n: model_class(n).title,
        help="The panel works for every model: the run at this page's threshold for the pixel masks, at the "
        "card's default knobs for the others (the early-exit model: the exit that fired vs the last exit).",
    )  # fmt: skip
    if name == MODEL:
        render_attribution_panel(trace, x, picked, image, compute_map=make_compute_map(trace, image))
        return
    other_x = model_input(name, picked.key, picked.image)
    render_attribution_panel(default_trace(name, picked.key, other_x), other_x, picked, image)


EXPLANATION = """
A **spatially masked residual network** puts a small **mask unit** (one 3x3 convolution) in
front of every residual block. For each position of the block's feature map it gives the
probability that the block's residual is needed there; where it reaches the **threshold**, the
block computes, and everywhere else its input passes on unchanged. Easy regions (flat
background) can skip most blocks while the object gets all of them.

**What runs.** The blocks here really compute only the kept positions (DynConv's gather,
compute, scatter): the first 3x3 convolution runs at the mask grown by one pixel (the second
convolution reads those positions), the second at the mask itself. FLOPs count those matrix
products, so they are executed FLOPs, not theoretical ones; the latency beside them is the
measured wall time of that sparse run on this CPU. At CIFAR's small feature maps the gathers
and scatters cost about as much as the skipped multiplications save until most positions are
skipped: compare the latency with the dense network's, beside it.

**Training.** The masks were trained with Gumbel-sigmoid noise and straight-through hard
decisions (the residual computed densely and multiplied by the mask, exactly what the sparse
path computes at kept positions), with a sparsity loss pulling the network's conv cost,
counted with the grown masks, towards a target, for the network and for each block.

**Attribution.** Grad-CAM weighs the 8x8 feature map that leaves stage 2 by the gradient of the
predicted class, keeping the positive part; saliency is the input gradient's largest magnitude
over the colours; integrated gradients average the gradient from the dataset's mean colour (a
grey image, the zero of the normalised input), and the map sums their magnitudes over the
colours, so evidence against the class counts too; occlusion sets 6x6 patches to that grey and
records how much the class score falls (captum).
The agreement numbers ask: of the 20% most attributed pixels (only those attributed above
zero), what share did the average masked block compute, against the share of all pixels it
computed (chance)? The overlap of two maps compares as many top pixels of each: 20%, or fewer
where one of them attributes fewer pixels above zero (Grad-CAM, after its ReLU, can).
"""

EXTRA_PAPERS = (
    "Grad-CAM: Selvaraju et al., ICCV 2017, arXiv:1610.02391",
    "Integrated gradients: Sundararajan et al., ICML 2017, arXiv:1703.01365",
    "Captum: Kokhlikyan et al., 2020, arXiv:2009.07896",
)


@state.knob_fragment
def render_masked_run(picked: InputImage, x: torch.Tensor) -> None:
    """Everything the threshold changes: reruns alone when the slider moves (a forward pass)."""
    model = load_model(MODEL)
    classes = model.card.classes
    top_left, top_right = st.columns([1, 2], gap="large")
    with top_right:
        knobs = render_knobs_or_static(
            model, "Compute every position (dense)", "The static network: threshold 0, no mask unit evaluated.",
            toggle_key="dense",
        )  # fmt: skip
    trace = mask_trace(MODEL, picked.key, knobs["threshold"], x)
    static = mask_trace(MODEL, picked.key, model.static_knobs["threshold"], x)
    share = float(np.mean(trace.extras["conv_density"]))
    with top_left:
        render_seen_image(picked, model.input_size)
    with top_right:
        render_prediction(trace, picked, classes, ("Conv FLOPs run", f"{100 * share:.0f}%"))
        render_cost_metrics(trace, timing=latency_of(trace, picked.key, x))
        st.caption(
            "Conv FLOPs run: the share of the masked blocks' dense convolution FLOPs. Executed sparsely (gather, "
            "compute, scatter): these FLOPs ran, and the latency is measured."
        )
        if trace.prediction != static.prediction:
            st.caption(f"Computing every position, the network would say **{classes[static.prediction]}**.")
    image = thumbnail(picked.key, MAP_SIDE, picked.image)
    st.subheader("Masks per block")
    render_masks(trace, image)
    st.caption(
        "Dark: positions the block did not compute (its input passed on unchanged). A block's share of its conv "
        "FLOPs is above its share of positions: its first convolution also runs next to each kept position, "
        "where the second one reads."
    )
    render_attribution(picked, trace, x, image)
    table = checked_table(MODEL)
    if table is not None:
        render_dataset_panel(table, knobs["threshold"], trace.extras["blocks_per_stage"])
    with st.expander("Per-block record of this run"):
        rows = [
            {"block": block_label(int(u.name[5:]), trace.extras["blocks_per_stage"]),
             "mean mask probability": "masks off" if u.score is None else f"{u.score:.3f}",
             "positions kept": int(np.sum(u.decision)), "positions": int(np.size(u.decision)), "MFLOPs": mflops_cell(u.flops),
             "dense MFLOPs": mflops_cell(u.full_flops)}
            for u in trace.units if u.kind == "pixel"
        ]  # fmt: skip
        render_small_table(rows)


render_model_page(
    MODEL, "Pixels", "Input-adaptive: each residual block computes only the positions its mask keeps.",
    render_masked_run, ("How pixel masks work", EXPLANATION), EXTRA_PAPERS,
)  # fmt: skip
