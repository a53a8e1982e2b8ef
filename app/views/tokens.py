"""Tokens: which patches a vision transformer keeps looking at, and which it prunes or merges."""

from __future__ import annotations

from typing import Any

import streamlit as st
import torch
from PIL import Image

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
    CURVE_COLOURS,
    STATIC,
    curve_colours,
    make_accuracy_curve,
    make_patch_heatmap,
    make_token_counts,
    vit_block_label,
)
from components.overlays import PALETTE, make_patch_grid, make_pruned_map, make_token_map
from components.pictures import make_final_tokens
from components.render import Timing, mflops_cell, render_cost_metrics, render_knobs, render_small_table
from models.core import Trace

MODEL = "vit_tokens"
MAP_SIDE = 192  # pixels of each small map (24 per patch)
CURVE_OF = {"prune": "prune (EViT)", "merge": "merge (ToMe)"}
LINE_OF = curve_colours(CURVE_OF.values())  # each mechanism's colour, on the accuracy and the token-count charts
KNOB_LABEL = {"prune": "keep ratio", "merge": "merged per layer"}
KNOB_SHORT = {"prune": "keep", "merge": "r ="}


@st.cache_data(max_entries=256, show_spinner=False)
def token_trace(name: str, key: str, knobs: tuple[tuple[str, Any], ...], _x: torch.Tensor) -> Trace:
    """One real batch-1 forward pass per image and token setting (experts at their defaults)."""
    return load_model(name).trace(_x, **dict(knobs))


def run(picked: InputImage, x: torch.Tensor, mode: str, value: float | None = None) -> tuple[Trace, Timing]:
    """The trace of one token setting, its latency and the static network's, measured once per
    token path. Only the knob the mode uses goes into the cache key, so the page's own setting
    and the same setting in the prune-vs-merge comparison share one forward pass."""
    knobs: dict[str, Any] = {"mode": mode}
    if mode == "prune":
        knobs["keep_ratio"] = float(value)
    elif mode == "merge":
        knobs["merge_r"] = round(value)
    trace = token_trace(MODEL, picked.key, tuple(sorted(knobs.items())), x)
    # a setting that sheds no token (keep ratio 1, nothing merged) runs the static network's
    # computation: one measurement, so the page never shows the full network "slower than itself"
    mode = "none" if load_model(MODEL).runs_static(**trace.knobs) else trace.knobs["mode"]
    path = (mode, tuple(trace.extras["tokens_mlp"]))
    return trace, path_latency(MODEL, picked.key, path, x, trace.knobs)[1]


def token_maps(trace: Trace, image: Image.Image) -> list[tuple[Image.Image, str]]:
    """The patch grid entering the first reducing block, then after each reduction."""
    ex, mode = trace.extras, trace.knobs["mode"]
    first = ex["reduce_at"][0]
    maps = [(make_patch_grid(image, ex["grid"]), f"into {vit_block_label(first)}: {ex['grid'] ** 2} patch tokens")]
    for i in ex["reduce_at"]:
        kept, groups, sizes = ex["kept"][i], ex["groups"][i], ex["token_sizes"][i]
        n = ex["tokens_mlp"][i] - 1  # patch tokens (the class token is never shed)
        if mode == "prune":
            # every token that is not a patch of its own is a fused one; an earlier fused token can
            # be among those a later block keeps, so there can be more than one
            picture, what = make_pruned_map(image, kept), f"{int(kept.sum())} kept + {n - int(kept.sum())} fused"
        else:
            picture, what = make_token_map(image, groups, sizes), f"{n} tokens from {ex['grid'] ** 2} patches"
        maps.append((picture, f"after {vit_block_label(i)}: {what}"))
    return maps


def render_token_maps(trace: Trace, image: Image.Image) -> None:
    for col, (picture, caption) in zip(
        st.columns(len(trace.extras["reduce_at"]) + 1), token_maps(trace, image), strict=True
    ):
        col.image(picture, caption=caption, width="stretch")


def matched_settings(table: dict[str, Any], mode: str, value: float) -> dict[str, dict[str, Any]]:
    """The eval-table point of this setting and the other mechanism's point closest to it in
    mean MFLOPs: prune vs merge at the same budget."""
    curves = table["curves"]
    other = "merge" if mode == "prune" else "prune"
    here = nearest_point(curves[mode]["points"], value)
    there = min(curves[other]["points"], key=lambda p: abs(p["mflops"] - here["mflops"]))
    return {mode: here, other: there}


def render_budget_comparison(
    picked: InputImage, x: torch.Tensor, matched: dict[str, dict[str, Any]], image: Image.Image
) -> dict[str, Trace]:
    """Prune and merge side by side at (about) the same test-set mean MFLOPs on this image."""
    st.subheader("Prune vs merge at the same budget")
    classes = load_model(MODEL).card.classes
    traces = {}
    for col, mode in zip(st.columns(2, gap="large"), ("prune", "merge"), strict=True):
        point = matched[mode]
        trace, timing = run(picked, x, mode, point["value"])
        traces[f"{CURVE_OF[mode]}, {point['value']:g}"] = trace
        with col:
            st.markdown(f"**{CURVE_OF[mode]}**, {KNOB_LABEL[mode]} {point['value']:g}")
            st.image(make_final_tokens(trace, image), width=MAP_SIDE)
            st.markdown(
                f"This image: **{classes[trace.prediction]}** ({100 * trace.confidence:.0f}%), "
                f"{trace.mflops:.1f} MFLOPs, {timing.ms:.1f} ms{' (rough)' if timing.noisy else ''}  \n"
                f"Test set: {100 * point['accuracy']:.2f}% at {point['mflops']:.1f} mean MFLOPs"
            )
    st.caption(
        "Each mechanism at the setting whose test-set mean compute is closest to the other's "
        "(from the eval table); the map shows the tokens left after the last reducing block."
    )
    return traces


def render_dataset_panel(table: dict[str, Any], matched: dict[str, dict[str, Any]], mode: str, measured: bool) -> None:
    curves, full = table["curves"], table["full"]
    point = matched.get(mode, full)  # mode "none": the static network itself
    at = None if measured else f"{KNOB_SHORT[mode]} {point['value']:g}, nearest measured"  # short: a metric label
    render_table_header(MODEL, table, point, full_name="every token", full_title="Every token", knob="setting", at=at)
    fig = make_accuracy_curve(
        {
            CURVE_OF["prune"]: {"points": curves["prune"]["points"], "static": [{**full, "label": "every token"}],
                                "value_label": "keep ratio"},
            CURVE_OF["merge"]: {"points": curves["merge"]["points"], "value_label": "merged per layer"},
        },
        colours=LINE_OF, current={CURVE_OF[m]: (p["mflops"], p["accuracy"]) for m, p in matched.items()},
    )  # fmt: skip
    st.plotly_chart(fig, key="tok_curve")
    st.caption("Each line sweeps one knob over the test set, a dot per value measured (dotted where no value lands "
               "between two far apart); "
               "the stars are the two settings compared above.")  # fmt: skip


EXPLANATION = """
A vision transformer cuts the image into **patches** (here an 8x8 grid over the 32x32 input,
through a small convolutional stem) and turns each into a **token**; a **class token** gathers
what the network concludes. Attention costs grow with the square of the token count, the MLPs
linearly, so **fewer tokens means less compute** in every later layer.

- **Pruning (EViT)**: after the attention of blocks 2-4, keep the patch tokens the class token
  attended to most (the *keep ratio*) and fuse the rest into a single token, their
  attention-weighted average, so their information is not lost entirely. DynamicViT learns a
  small predictor for the same decision; A-ViT halts tokens adaptively per layer.
- **Merging (ToMe)**: split the tokens into two sets, match each token to its most similar
  partner by the attention keys, and average the *r* most similar pairs into one token. Merged
  tokens then count as many patches in attention (proportional attention). No training needed.

Shed tokens are really gone: later blocks run on the smaller set, and the FLOPs and latency
above are of that smaller computation. The latency times the pass the prediction needs; which
patches each token stands for (the maps here) is worked out after it, from the indices the pass
kept. Both mechanisms run on the same trained weights: the model was trained with random keep
ratios and merge counts on half of its steps, then fine-tuned twice to prune harder (the last
time shedding tokens on 80 % of the steps, half of those pruned at a keep ratio of 0.3-0.55).
"""
EXTRA_PAPERS = (
    "DynamicViT: Rao et al., NeurIPS 2021, arXiv:2106.02034",
    "A-ViT: Yin et al., CVPR 2022, arXiv:2112.07658",
)


@state.knob_fragment
def render_token_run(picked: InputImage, x: torch.Tensor) -> None:
    """Everything the token knobs change (each setting needs a forward pass)."""
    model = load_model(MODEL)
    classes = model.card.classes
    knob = {k.key: k for k in model.knobs}
    defaults = {k.key: model.default_knob(k) for k in model.knobs}

    def key_of(key: str) -> str:
        return state.knob_key(MODEL, key)

    top_left, top_right = st.columns([1, 2], gap="large")
    with top_right:
        mode = render_knobs((knob["mode"],), defaults, key_of=key_of)["mode"]
        cols = st.columns(2)
        with cols[0]:
            keep = render_knobs((knob["keep_ratio"],), defaults, key_of=key_of, disabled=mode != "prune")["keep_ratio"]
        with cols[1]:
            merge_r = render_knobs((knob["merge_r"],), defaults, key_of=key_of, disabled=mode != "merge")["merge_r"]
    trace, timing = run(picked, x, mode, keep if mode == "prune" else merge_r)
    static = token_trace(MODEL, picked.key, (("mode", "none"),), x)
    ex = trace.extras
    with top_left:
        render_seen_image(picked, model.input_size)
    with top_right:
        last = ex["tokens_attn"][-1]
        render_prediction(
            trace, picked, classes, ("Tokens in the last block", f"{last} of {static.extras['tokens_attn'][-1]}")
        )
        render_cost_metrics(trace, timing=timing)
        if trace.prediction != static.prediction:
            st.caption(f"With every token, the network would say **{classes[static.prediction]}**.")
    image = thumbnail(picked.key, MAP_SIDE, picked.image)
    if mode == "none":
        st.info("Every token goes through every block: choose *prune* or *merge* to see tokens shed.")
    else:
        render_token_maps(trace, image)
        how = (
            "Dark patches were pruned: each pruning block fuses the tokens it prunes into one token, their "
            "attention-weighted average; a fused token that a later block keeps stays a token of its own."
            if mode == "prune"
            else "Patches tinted with the same colour were merged into one token (colours repeat only past "
            f"{len(PALETTE)} merged tokens); clear patches are still tokens of their own."
        )
        st.caption(f"{how} Later blocks run on the tokens left after {vit_block_label(ex['reduce_at'][-1])}.")
    with st.expander("The class token's attention, which pruning ranks patches by"):
        cols = st.columns(len(ex["reduce_at"]))
        for col, i in zip(cols, ex["reduce_at"], strict=True):
            col.plotly_chart(
                make_patch_heatmap(ex["cls_attention"][i], title=vit_block_label(i), label="attn"), key=f"tok_attn{i}"
            )
    table = checked_table(MODEL)
    counts = {"every token": static, "this setting": trace}
    if table is not None:
        # with every token kept, compare the two mechanisms at the default pruning budget
        base = (mode, keep if mode == "prune" else merge_r) if mode != "none" else ("prune", defaults["keep_ratio"])
        matched = matched_settings(table, *base)
        compared = render_budget_comparison(picked, x, matched, image)
        measured = mode == "none" or model.measured_point(table, trace.knobs) is not None
        counts = {"every token": static, **({} if measured else {"this setting": trace}), **compared}
    colours = {name: STATIC if name == "every token" else CURVE_COLOURS[3] if name == "this setting"
               else LINE_OF[name.split(",")[0]] for name in counts}  # fmt: skip
    st.plotly_chart(make_token_counts(counts, colours), key="tok_counts")  # as the accuracy curves below
    st.caption("Tokens (class token included) each block's attention ran on.")
    if table is not None:
        render_dataset_panel(table, matched, mode, measured)
    with st.expander("Per-unit record of this run"):
        rows = [{"unit": u.name, "kind": u.kind, "ran": "yes" if u.executed else "no",
                 "MFLOPs": mflops_cell(u.flops), "static MFLOPs": mflops_cell(u.full_flops)}
                for u in trace.units]  # fmt: skip
        render_small_table(rows)


render_model_page(
    MODEL, "Tokens", "Input-adaptive: a vision transformer sheds patch tokens it does not need, by pruning or merging.",
    render_token_run, ("How token pruning and merging work", EXPLANATION), EXTRA_PAPERS,
)  # fmt: skip
