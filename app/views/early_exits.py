"""Early exits: which exit fired for this image, why, and what the threshold costs and buys."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from app import state
from app.common import (
    checked_table,
    nearest_point,
    path_latency,
    render_model_page,
    render_prediction,
    render_seen_image,
    render_table_header,
)
from app.models_cache import load_model
from components.figures import EXIT, exit_topk, make_accuracy_curve, make_exit_confidence, make_exit_strip
from components.render import Timing, render_cost_metrics, render_knobs, render_small_table
from components.tables import make_share_bars, make_share_grid, shares
from models.core import Trace
from models.early_exit import CRITERION_LABELS, exits_enabled

MODEL = "early_exit"


@st.cache_data(max_entries=64, show_spinner=False)
def all_exits_record(name: str, key: str, _x: torch.Tensor) -> Trace:
    """Every exit's prediction for one image, computed once (keyed by the image hash)."""
    return load_model(name).trace_all(_x)


@st.cache_resource(max_entries=128, show_spinner=False)
def strip_figure(key: str, path: tuple[int, bool], _trace: Trace, _classes: tuple[str, ...]) -> go.Figure:
    """The exit strip depends only on the image and the path taken, not on the exact threshold:
    cached per path, as it is the costliest figure to build (read-only once built)."""
    return make_exit_strip(_trace, _classes)


def run_path(trace: Trace) -> tuple[int, bool]:
    """What the forward pass did: the exit that fired, and whether early exits were evaluated."""
    return trace.extras["fired_exit"], exits_enabled(trace.knobs["threshold"])


def latency_of(trace: Trace, key: str, x: torch.Tensor) -> tuple[int, Timing]:
    """The exit the real batch-1 run stopped at, and the latencies of that run and of the full
    network: measured once per path the re-decision ``trace`` takes, with the knobs that first
    took it. So the re-decision is checked against a real run on every new path; that they agree
    at every threshold is the model-contract tests' to check (200 test images). A real run on
    every move, as before, was 10 of the 55 ms the server took for one (stop 18)."""
    real, timing = path_latency(trace.model, key, (trace.knobs["criterion"], *run_path(trace)), x, trace.knobs)
    return real.extras["fired_exit"], timing


def render_dataset_panel(table: dict[str, Any], knobs: dict[str, Any], classes: tuple[str, ...]) -> None:
    criterion, threshold = knobs["criterion"], knobs["threshold"]
    points = table["criteria"][criterion]
    point = nearest_point(points, threshold)
    n = table["n"]
    render_table_header(MODEL, table, point, full_name="last exit", full_title="Full network")
    left, right = st.columns(2)
    with left:
        static = [
            {"mflops": s["mflops"], "accuracy": s["accuracy"], "label": f"exit {s['exit'] + 1}"}
            for s in table["static_exits"]
        ]
        name = "dynamic: every threshold"  # the criterion is the knob's, above
        curve = {name: {"points": points, "static": static, "static_name": "static: one exit always"}}
        fig = make_accuracy_curve(curve, current={name: (point["mflops"], point["accuracy"])})
        st.plotly_chart(fig, key="ee_curve")
        st.caption("Where the line runs above a square, stopping when confident is more accurate than always "
                   "stopping at that exit, for the same mean compute.")  # fmt: skip
    exits = [f"exit {k + 1}" for k in range(len(point["exit_share"]))]
    with right:
        tip = "{percent:.1f}% of test images leave at {label}"
        st.html(make_share_bars(exits, point["exit_share"], colour=EXIT, tip=tip))
        st.caption("Where the test images leave the network at this threshold.")
    left, right = st.columns(2)
    with left:
        tip = "{percent:.1f}% of the test images of {row} leave at {column}"
        st.html(make_share_grid(classes, exits, shares(point["class_exit_counts"]), tip=tip))  # (C, K)
        st.caption("Which classes exit early: the % of each class's test images that leave at each exit (each row "
                   "sums to 100 before rounding).")  # fmt: skip
    with right:
        st.markdown("**Overthinking** (Kaya et al., 2019)")
        st.metric("At this threshold: early exit right, last wrong", f"{point['early_right_last_wrong']} images",
                  help="At this threshold, the exit that fired was right where the full network would be wrong.")  # fmt: skip
        st.metric("At this threshold: early exit wrong, last right", f"{point['early_wrong_last_right']} images",
                  help="At this threshold, stopping early cost these images their correct answer.")  # fmt: skip
        over = table["overthinking"]["some_earlier_exit_right_last_wrong"]
        st.metric("At any threshold: some earlier exit right, last wrong", f"{over} images ({100 * over / n:.1f}%)",
                  help="For any threshold: images an earlier exit got right that the last exit gets wrong.")  # fmt: skip


def explanation(num_classes: int) -> str:
    return f"""
A **multi-exit network** attaches small classifiers ("exits") along its depth. At inference,
each exit in turn predicts; if its **confidence** reaches the **threshold**, the forward pass
**stops** there, and the remaining stages are not computed. Easy images leave early; hard ones
go deeper. A threshold of 1.0 runs the static network: no early exit is even evaluated.

Confidence criteria: *max softmax probability*; *1 - normalised entropy* (entropy divided by
log {num_classes}, its largest value, so the same 0-1 threshold range fits); *margin* between
the top two classes.

Compute counts every stage that ran **and** every exit classifier evaluated on the way: an exit
that does not fire still costs FLOPs, so an image that passes every exit costs more than the
static network. A static exit (squares on the curve) runs only its own classifier.
"""


@state.knob_fragment
def render_exit_run(picked: Any, x: torch.Tensor) -> None:
    """Everything the threshold and criterion change: reruns alone when they move (the
    re-decision from the cached all-exits pass; a real batch-1 run on each new path)."""
    model = load_model(MODEL)
    classes = model.card.classes
    defaults = {k.key: model.default_knob(k) for k in model.knobs}
    record = all_exits_record(MODEL, picked.key, x)

    top_left, top_right = st.columns([1, 2], gap="large")
    with top_right:
        knobs = render_knobs(model.knobs, defaults, key_of=lambda key: state.knob_key(MODEL, key))
    trace = model.redecide(record, **knobs)
    fired_real, timing = latency_of(trace, picked.key, x)
    fired = trace.extras["fired_exit"]

    with top_left:
        render_seen_image(picked, model.input_size)
    with top_right:
        render_prediction(trace, picked, classes, ("Exit", f"{fired + 1} of {trace.extras['num_exits']}"))
        render_cost_metrics(trace, timing=timing)
        if fired_real != fired:  # the real path and the instant re-decision must agree; say so if not
            st.warning(f"The batch-1 run stopped at exit {fired_real + 1}, the re-decision at exit {fired + 1}.")

    st.plotly_chart(strip_figure(picked.key, run_path(trace), trace, classes), key="ee_strip")
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(
            make_exit_confidence(trace, knobs["threshold"], classes, CRITERION_LABELS[knobs["criterion"]]),
            key="ee_conf",
        )
        st.caption("Hatched grey bars: exits this run did not evaluate, shown from one all-exits pass.")
    with right:
        rows = [
            {
                "exit": f"exit {k + 1}" + (" (fired)" if k == fired else ""),
                **{f"top {i + 1}": f"{c}\u00a0{p:.0%}" for i, (c, p) in enumerate(top)},  # one line a cell
            }
            for k, top in enumerate(exit_topk(np.asarray(record.extras["exit_probs"]), classes))
        ]
        render_small_table(rows)

    table = checked_table(MODEL)
    if table is not None:
        render_dataset_panel(table, knobs, classes)


render_model_page(
    MODEL, "Early exits", "Output-adaptive: stop the forward pass at the first exit that is confident enough.",
    render_exit_run, ("How early exits work", explanation(len(load_model(MODEL).card.classes))),
)  # fmt: skip
