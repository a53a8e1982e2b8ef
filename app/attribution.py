"""The attribution panel: captum maps of what a run computed, beside the model's own picture.

Grad-CAM and saliency follow every knob move; integrated gradients and occlusion wait for a
button (tens to hundreds of forward passes) and are then cached per image and setting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

from app import state
from app.inputs import InputImage
from app.models_cache import load_model
from components.overlays import make_heat_overlay
from models.attribution import LIVE, METHODS, agreement, attribute, top_count, top_share
from models.core import DynamicModel, Trace

SLOW = tuple(m for m in METHODS if m not in LIVE)
SHARE = 0.2  # the top share of attributed pixels the agreement numbers use


@st.cache_data(max_entries=256, show_spinner=False)
def attribution_map(
    name: str, key: str, setting: tuple[tuple[str, Any], ...], method: str, static: bool, _x: torch.Tensor,
    _trace: Trace,
) -> np.ndarray:  # fmt: skip
    """One method's ``(H, W)`` map of one run (or the static network), keyed by image and
    :func:`map_setting`."""
    return attribute(load_model(name), _x, _trace, method, static=static)


def map_setting(trace: Trace, static: bool) -> tuple[tuple[str, Any], ...]:
    """What a map depends on besides the image and the method: the run's knobs; for the static
    network only the class it explains (the run's prediction), so that a knob move recomputes
    the run's maps but not the static network's."""
    return (("explains", trace.prediction),) if static else tuple(sorted(trace.knobs.items()))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two maps' top ``SHARE`` of pixels, as many of each: where one
    map has fewer pixels above zero (:func:`top_count`), the other's top as many, so that two
    maps that agree can reach 100%."""
    k = min(top_count(a, SHARE), top_count(b, SHARE))
    ta, tb = top_share(a, SHARE, count=k), top_share(b, SHARE, count=k)
    union = (ta | tb).sum()
    return float((ta & tb).sum() / union) if union else float("nan")


def percent(value: float) -> str:
    return "n/a (no pixel attributed)" if np.isnan(value) else f"{100 * value:.0f}%"


def rows_of(trace: Trace, model: DynamicModel) -> list[bool]:
    """Explain the run, and the static network beside it when the run computed another function
    (not by its cost: a run whose last exit fired costs more than the static network, for its
    earlier exits, and computes the same function)."""
    return [False] if model.explained_forward(trace).static else [False, True]


def render_attribution_panel(
    trace: Trace, x: torch.Tensor, picked: InputImage, image: Image.Image, *, compute_map: Image.Image | None = None
) -> None:
    """Maps of the run (and of the static network when the run was dynamic) for ``trace``'s
    predicted class; with ``compute_map`` (pixel masks) it leads the row, and each map's
    agreement with the masks is measured."""
    model = load_model(trace.model)
    classes = model.card.classes
    knobs = tuple(sorted(trace.knobs.items()))
    slow_key = (trace.model, picked.key, knobs)
    asked = slow_key in st.session_state.setdefault(state.ATTRIBUTION_SLOW, set())
    methods = [*LIVE, *(SLOW if asked else ())]
    st.caption(
        f"Every map explains the class **{classes[trace.prediction]}** (this run's prediction), scaled to its own "
        "maximum; brighter = more attributed."
    )
    rows = rows_of(trace, model)
    maps = {
        (static, m): attribution_map(trace.model, picked.key, map_setting(trace, static), m, static, x, trace)
        for static in rows
        for m in LIVE
    }
    if asked:
        bar = st.progress(0.0, text="Integrated gradients and occlusion...")
        for n, (static, method) in enumerate((s, m) for s in rows for m in SLOW):
            setting = map_setting(trace, static)
            maps[static, method] = attribution_map(trace.model, picked.key, setting, method, static, x, trace)
            bar.progress((n + 1) / (len(rows) * len(SLOW)), text=f"{METHODS[method]} done")
        bar.empty()
    masks = trace.extras.get("masks")
    for static in rows:
        st.markdown(
            f"**{'Static network' if static else 'This run'}**: {model.explained_forward(trace, static=static).what}"
        )
        cols = st.columns(len(methods) + (compute_map is not None))
        if compute_map is not None:
            if static:
                cols[0].caption("Dense: every block computes every pixel.")
            else:
                caption = "compute map: how many blocks computed each pixel (purple: none, yellow: all)"
                cols[0].image(compute_map, caption=caption, width="stretch")
            cols = cols[1:]
        for col, method in zip(cols, methods, strict=True):
            col.image(
                make_heat_overlay(image, maps[static, method], vmax=1.0), caption=METHODS[method], width="stretch"
            )
            if compute_map is not None and not static and masks and all(m is not None for m in masks):
                agree = agreement(maps[static, method], masks, share=SHARE)
                col.caption(f"Of its top {100 * SHARE:.0f}% pixels, the average block computed {percent(agree.inside)}; "
                            f"by chance (as many positions, anywhere) {100 * agree.chance:.0f}%.")  # fmt: skip
    if len(rows) == 2:
        parts = [f"{METHODS[m]} {percent(overlap(maps[False, m], maps[True, m]))}" for m in methods]
        st.caption(
            f"Overlap (IoU) of the top {100 * SHARE:.0f}% pixels, this run vs the static network: " + ", ".join(parts)
        )
    if not asked:
        st.button(
            "Compute integrated gradients and occlusion", key=f"attr_slow:{trace.model}",
            on_click=lambda: st.session_state[state.ATTRIBUTION_SLOW].add(slow_key),
            help=f"{len(rows) * 2} slower attributions (tens to hundreds of forward passes each), cached for this image.",
        )  # fmt: skip
