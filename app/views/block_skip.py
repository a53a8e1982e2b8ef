"""Block skipping: which residual blocks this image ran, which it skipped, and what it saved."""

from __future__ import annotations

from typing import Any

import streamlit as st
import torch

from app import state
from app.common import (
    checked_table,
    nearest_point,
    path_latency,
    render_knobs_or_static,
    render_model_page,
    render_prediction,
    render_seen_image,
    render_table_header,
)
from app.inputs import usable_test_split
from app.models_cache import load_model
from components.figures import RAN, block_label, make_accuracy_curve, make_block_path
from components.render import Timing, mflops_cell, render_cost_metrics, render_small_table
from components.tables import make_share_bars, make_share_grid, shares
from models.core import Trace

MODEL = "block_skip"


@st.cache_data(max_entries=256, show_spinner=False)
def gated_trace(name: str, key: str, threshold: float, _x: torch.Tensor) -> Trace:
    """One real batch-1 dynamic forward pass per image and threshold."""
    return load_model(name).trace(_x, threshold=threshold)


def latency_of(trace: Trace, key: str, x: torch.Tensor) -> Timing:
    """Latency of the real batch-1 run, measured once per path (blocks run, gates on)."""
    gates_on = any(p is not None for p in trace.extras["gate_probs"])
    return path_latency(trace.model, key, (tuple(trace.extras["executed"]), gates_on), x, trace.knobs)[1]


def render_test_images(title: str, rows: list[dict[str, Any]], classes: tuple[str, ...]) -> None:
    st.markdown(f"**{title}**")
    split = usable_test_split()
    cols = st.columns(len(rows))
    shown = 0
    for col, row in zip(cols, rows, strict=True):
        verdict = "right" if row["correct"] else "wrong"
        caption = f"#{row['index']} {classes[row['label']]}, {row['mflops']:.0f} MFLOPs, {verdict}"
        # the table's image numbers index the full test split in its sorted order: another copy
        # (a subset, another order) gets captions only, never someone else's picture
        if split is not None and row["index"] < len(split) and int(split.labels[row["index"]]) == row["label"]:
            col.image(split.images[row["index"]], caption=caption, width="stretch")
            shown += 1
        else:
            col.caption(caption)
    if shown < len(rows):
        st.caption(
            "Set `DYNN_CIFAR10` to the CIFAR-10 test split these numbers index to see the images "
            "(pick them by number in the sidebar)."
        )


def render_dataset_panel(table: dict[str, Any], threshold: float, classes: tuple[str, ...], per_stage: int) -> None:
    point = nearest_point(table["points"], threshold)
    full = table["full"]
    render_table_header(MODEL, table, point, full_name="every block", full_title="Every block on")
    left, right = st.columns(2)
    with left:
        curve = {"gated": {"points": table["points"][1:], "static": [{**full, "label": "every block"}]}}
        fig = make_accuracy_curve(curve, current={"gated": (point["mflops"], point["accuracy"])})
        st.plotly_chart(fig, key="bs_curve")
        st.caption("Line: the gates over the threshold sweep, a dot per threshold measured, dotted where no threshold "
                   "lands between two far apart. "
                   "Square: every block on (the static network).")  # fmt: skip
    gated = len(point["block_rate"])
    with right:
        runs = [f"{k} of {gated}" for k in range(gated + 1)]  # images by the number of gated blocks run
        tip = "{percent:.1f}% of test images ran {label} gated blocks"
        st.html(make_share_bars(runs, shares(point["blocks_histogram"]), colour=RAN, tip=tip))
        st.caption(f"How many of the {gated} gated blocks the test images ran at this threshold.")
    blocks = [block_label(i, per_stage) for i in range(gated)]
    tip = "block {column} runs for {percent:.1f}% of the test images of {row}"
    st.html(make_share_grid(classes, blocks, point["class_block_rate"], tip=tip))
    st.caption("Which blocks each class relies on: the % of its test images that ran each block (ConvNet-AIG).")
    render_test_images("Cheapest paths at this threshold", point["cheapest"], classes)
    render_test_images("Most expensive paths at this threshold", point["dearest"], classes)


EXPLANATION = """
A **gated residual network** puts a small **gate** in front of every residual block. The gate
looks at the block's input (global average pooling and two small linear layers, as in
ConvNet-AIG) and gives the probability that the block is needed. If the probability reaches
the **threshold**, the block runs; if not, the block is **not computed** and its input passes
on unchanged through the identity shortcut. Different images take different paths.

Threshold 0 runs every block and evaluates no gate: the static network. The layers that change
resolution (stem, two downsampling convolutions, head) always run. Compute counts what ran,
gates included.

The gates were trained with Gumbel-sigmoid samples and straight-through hard decisions, with a
loss that pulls each block's execution rate towards a target (ConvNet-AIG). A share of each
batch ran every block (the card's `all_on_share`), so the same weights serve as the static network.
"""


@state.knob_fragment
def render_gated_run(picked: Any, x: torch.Tensor) -> None:
    """Everything the threshold changes: reruns alone when the slider moves (a forward pass)."""
    model = load_model(MODEL)
    classes = model.card.classes
    top_left, top_right = st.columns([1, 2], gap="large")
    with top_right:
        knobs = render_knobs_or_static(
            model, "Force every block on", "Run the static network (threshold 0, no gate evaluated) to compare.",
            toggle_key="all_on",
        )  # fmt: skip
    trace = gated_trace(MODEL, picked.key, knobs["threshold"], x)
    static = gated_trace(MODEL, picked.key, model.static_knobs["threshold"], x)
    executed = trace.extras["executed"]
    with top_left:
        render_seen_image(picked, model.input_size)
    with top_right:
        render_prediction(trace, picked, classes, ("Blocks run", f"{sum(executed)} of {len(executed)}"))
        render_cost_metrics(trace, timing=latency_of(trace, picked.key, x))
        if trace.prediction != static.prediction:
            st.caption(f"With every block on, the network would say **{classes[static.prediction]}**.")
    st.plotly_chart(make_block_path(trace), key="bs_path")
    per_stage = trace.extras["blocks_per_stage"]
    st.caption(
        "Stem, downsampling layers and head (dark) always run. Blocks that ran are coloured by their gate's "
        "probability; crossed-out grey blocks were skipped, and the path passes under them through the identity shortcut."
    )
    table = checked_table(MODEL)
    if table is not None:
        render_dataset_panel(table, knobs["threshold"], classes, per_stage)
    with st.expander("Per-block record of this run"):
        rows = [
            {"block": block_label(int(u.name[5:]), per_stage),
             "gate probability": "gates off" if u.score is None else f"{u.score:.3f}",
             "ran": "yes" if u.executed else "skipped", "MFLOPs": mflops_cell(u.flops),
             "static MFLOPs": mflops_cell(u.full_flops)}
            for u in trace.units if u.kind == "block"
        ]  # fmt: skip
        render_small_table(rows)
        if knobs["threshold"] > 0:
            st.caption(f"A block runs when its gate's probability reaches the threshold, {knobs['threshold']:.2f}.")


render_model_page(
    MODEL, "Block skipping", "Computation-graph-adaptive: a gate in front of every residual block decides whether it runs.",
    render_gated_run, ("How block skipping works", EXPLANATION),
)  # fmt: skip
