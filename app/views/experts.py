"""Experts: which expert each patch of the image is routed to, and what capacity limits drop."""

from __future__ import annotations

from typing import Any

import numpy as np
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
    thumbnail,
)
from app.inputs import InputImage
from app.models_cache import load_model
from components.figures import (
    make_class_expert_heatmap,
    make_expert_load,
    make_expert_share,
    make_knob_sweep,
    make_patch_heatmap,
    vit_block_label,
)
from components.overlays import expert_colour_names, make_expert_map
from components.render import Timing, render_cost_metrics, render_knobs
from models.core import Trace
from models.vit import NUM_EXPERTS, STATIC_TOP_K

MODEL = "vit_tokens"
MAP_SIDE = 160
EXPERT_KNOBS = ("top_k", "capacity")
ORDINAL = ("1st", "2nd", "3rd", "4th")


@st.cache_data(max_entries=256, show_spinner=False)
def expert_trace(name: str, key: str, top_k: int, capacity: float, _x: torch.Tensor) -> Trace:
    """One real batch-1 forward pass with every token kept (the maps cover every patch)."""
    return load_model(name).trace(_x, mode="none", top_k=top_k, capacity=capacity)


def run(picked: InputImage, x: torch.Tensor, top_k: int, capacity: float) -> tuple[Trace, Timing]:
    """The trace, its latency and the static network's, measured once per routing outcome
    (experts called, choices served)."""
    trace = expert_trace(MODEL, picked.key, top_k, capacity, x)
    path = tuple((tuple(r["load"]), r["dropped_choices"]) for r in trace.extras["moe"])
    # the static setting measures only itself: a capacity that drops nothing routes like it,
    # but a shared entry measured at that capacity showed the full network "1.03x" itself
    static = load_model(MODEL).runs_static(**trace.knobs)
    return trace, path_latency(MODEL, picked.key, (top_k, path, static), x, trace.knobs)[1]


def layer_names(trace: Trace) -> list[str]:
    return [vit_block_label(r["block"]) for r in trace.extras["moe"]]


def render_layer(record: dict[str, Any], picked: InputImage, name: str) -> None:
    """One MoE layer on this image: a map per choice rank, router confidence, expert load."""
    image = thumbnail(picked.key, MAP_SIDE, picked.image)
    k = record["experts"].shape[0]
    dropped = (
        f"; {record['dropped_choices']} of {record['choices']} expert choices dropped, "
        f"{record['dropped_tokens']} tokens skipped the MLP"
        if record["dropped_choices"]
        else "; nothing dropped"
    )
    st.markdown(f"**{name}**: {record['tokens']} tokens (the class token and {record['tokens'] - 1} patches), "
                f"capacity {record['capacity']} tokens per expert{dropped}")  # fmt: skip
    maps, confidence, load = st.columns([1.1 * k, 1.6, 2.2])
    for col, rank in zip(maps.columns(k), range(k), strict=True):
        col.image(make_expert_map(image, record["experts"][rank]), caption=f"{ORDINAL[rank]} choice", width="stretch")
    maps.caption(f"{expert_colour_names(len(record['load']))}; dark: that choice was dropped.")
    confidence.plotly_chart(
        make_patch_heatmap(record["probs"].max(-1), title="router's top probability", label="p", zmax=1.0),
        key=f"ex_conf{record['block']}",
    )
    load.plotly_chart(make_expert_load(record), key=f"ex_load{record['block']}")
    load.caption("Tokens per expert: served, in the expert's colour; grey above them: chose it but found it full "
                 "(dropped); red dashes, when fewer than the tokens: its capacity.")  # fmt: skip


def table_point(table: dict[str, Any], top_k: int, capacity: float, defaults: dict[str, Any]) -> dict[str, Any] | None:
    """The eval-table point of this setting: the k sweep runs at the default capacity, the
    capacity sweep at the default k; other combinations were not measured."""
    curves = table["curves"]
    if capacity == defaults["capacity"]:
        return nearest_point(curves["top_k"]["points"], top_k)
    if top_k == defaults["top_k"]:
        return nearest_point(curves["capacity"]["points"], capacity)
    return None


def render_dataset_panel(
    table: dict[str, Any], point: dict[str, Any] | None, trace: Trace, classes: tuple[str, ...]
) -> None:
    curves, layers = table["curves"], layer_names(trace)
    k, capacity = trace.knobs["top_k"], trace.knobs["capacity"]
    no_drops = capacity * k >= NUM_EXPERTS  # every buffer holds every token: the k sweep's condition
    if point is None:
        st.subheader(f"On the CIFAR-10 test set ({table['n']:,} images)")
        st.info("The test set was swept over k at the default capacity and over the capacity at the default k; "
                "reset one of the two knobs to see this setting's test-set numbers.")  # fmt: skip
    else:
        render_table_header(
            MODEL,
            table,
            point,
            full_name=f"k = {STATIC_TOP_K}, no drops",
            full_title=f"Static (k = {STATIC_TOP_K}, no drops)",
            knob="setting",
        )
        st.plotly_chart(make_expert_share(point["expert_share"], layers), key="ex_share")
        st.caption("How the test images' tokens spread over the experts at this setting (served choices).")
        by_layer = np.asarray(point["class_expert_share"]).transpose(1, 0, 2)  # (L, C, E)
        top = float(by_layer.max())  # one colour scale for the layers side by side
        for col, share, layer in zip(st.columns(len(layers)), by_layer, layers, strict=True):
            col.plotly_chart(make_class_expert_heatmap(share, classes, layer, zmax=top), key=f"ex_class_{layer}")
        st.caption("Which experts each class's tokens go to, per MoE layer (V-MoE's routing analysis).")
    # where this setting sits on the two sweeps (red bar), or why it is on neither
    on_k = f"red: this setting, k = {k}" if no_drops else f"this setting's capacity C = {capacity:g} can drop choices"
    swept = k == STATIC_TOP_K and any(abs(p["value"] - capacity) < 1e-9 for p in curves["capacity"]["points"])
    on_capacity = (
        f"red: this setting, C = {capacity:g}" if swept
        else f"at k = {STATIC_TOP_K}, every C from {NUM_EXPERTS / STATIC_TOP_K:g} up drops nothing, as C = {capacity:g} does"
        if k == STATIC_TOP_K else f"this setting's k = {k} is not the sweep's"
    )  # fmt: skip
    left, right = st.columns(2)
    with left:
        st.plotly_chart(make_knob_sweep(curves["top_k"]["points"], knob_label="experts per token (k)", bar_key="mflops",
                                        bar_label="mean MFLOPs", current=k if no_drops else None), key="ex_k")  # fmt: skip
        st.caption(f"Compute and accuracy as k changes, with no choice dropped; {on_k}.")
    with right:
        st.plotly_chart(make_knob_sweep(curves["capacity"]["points"], knob_label=f"capacity factor C (k = {STATIC_TOP_K})",
                                        bar_key="dropped_share", bar_label="% of choices dropped",
                                        current=capacity if k == STATIC_TOP_K else None), key="ex_cap")  # fmt: skip
        st.caption(f"Expert choices dropped by the capacity limit, and what that does to accuracy; {on_capacity}.")


EXPLANATION = """
In a **mixture-of-experts** layer the one MLP of a transformer block is replaced by several
(**experts**, here 4 in blocks 3 and 5). A small linear **router** scores every token against
every expert; each token goes to its **top k** experts, and their outputs are summed, weighted
by the router's probabilities. Compute per token grows with k, not with the number of experts:
the network has more parameters than it uses on any one token. Experts no token chose are not
called at all.

Each expert has a buffer of **ceil(C x k x N / E)** tokens per image (capacity factor C, N
tokens, E experts). Tokens are served in V-MoE's batch-prioritised order: every token's first
choice before any second choice, the router's surest tokens first. A choice that finds its
expert full is **dropped**; a token whose every choice is dropped skips the MLP and the
residual connection carries it on unchanged (dark patches in the maps).

Training added V-MoE's balancing losses (importance and load) so that the router spreads
tokens over the experts instead of collapsing onto one.
"""
EXTRA_PAPERS = (
    "Switch Transformers (capacity factor): Fedus et al., JMLR 2022, arXiv:2101.03961",
    "Sparsely-gated MoE: Shazeer et al., ICLR 2017, arXiv:1701.06538",
)


@state.knob_fragment
def render_expert_run(picked: InputImage, x: torch.Tensor) -> None:
    """Everything k and the capacity change (each setting needs a forward pass)."""
    model = load_model(MODEL)
    classes = model.card.classes
    knobs = tuple(k for k in model.knobs if k.key in EXPERT_KNOBS)
    defaults = {k.key: model.default_knob(k) for k in model.knobs}
    top_left, top_right = st.columns([1, 2], gap="large")
    with top_right:
        cols = st.columns(2)
        values = {}
        for col, knob in zip(cols, knobs, strict=True):
            with col:
                values |= render_knobs((knob,), defaults, key_of=lambda key: state.knob_key(MODEL, key))
    top_k, capacity = round(values["top_k"]), float(values["capacity"])
    trace, timing = run(picked, x, top_k, capacity)
    static = expert_trace(MODEL, picked.key, model.static_knobs["top_k"], model.static_knobs["capacity"], x)
    moe = trace.extras["moe"]
    with top_left:
        render_seen_image(picked, model.input_size)
    with top_right:
        skipped = sum(r["dropped_tokens"] for r in moe)
        # each MoE layer routes every token, the class token too: the count is summed over layers
        tokens = [r["tokens"] for r in moe]
        total = f"{len(moe)} × {tokens[0]}" if len(set(tokens)) == 1 else str(sum(tokens))
        dropped = (f"Tokens dropped ({len(moe)} MoE layers)", f"{skipped} of {total}")
        render_prediction(trace, picked, classes, dropped)
        render_cost_metrics(trace, timing=timing)
        if trace.prediction != static.prediction:
            st.caption(f"With k = {STATIC_TOP_K} and no drops, the network would say **{classes[static.prediction]}**.")
    st.caption(
        "Every token is kept on this page (token reduction off), so the maps cover every patch. Colours are the "
        "experts, as in the load charts; a patch is dark on a map where its choice of that rank was dropped, "
        "and a patch dark on every map skipped the MLP."
    )
    for record, name in zip(moe, layer_names(trace), strict=True):
        render_layer(record, picked, name)
    table = checked_table(MODEL)
    if table is not None:
        render_dataset_panel(table, table_point(table, top_k, capacity, defaults), trace, classes)


render_model_page(
    MODEL, "Experts", "Computation-graph-adaptive: a router sends each patch token to a few of the experts.",
    render_expert_run, ("How a mixture of experts routes tokens", EXPLANATION), EXTRA_PAPERS,
)  # fmt: skip
