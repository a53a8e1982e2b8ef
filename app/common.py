"""What every model page shares: preprocessing cache, the prediction header, table lookups."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import streamlit as st
import torch
from PIL import Image

from app.inputs import InputImage
from app.models_cache import eval_table, load_model, table_matches_weights
from components.images import square_thumbnail, to_model_input
from models.core import Trace


@st.cache_data(max_entries=64, show_spinner=False)
def model_input(name: str, key: str, _image: Image.Image) -> torch.Tensor:
    """The card's preprocessing of one image, keyed by its content hash."""
    model = load_model(name)
    return to_model_input(_image, size=model.input_size, mean=model.mean, std=model.std)


LATENCY_REPEATS = 5


@st.cache_data(max_entries=256, show_spinner=False)
def path_latency(name: str, key: str, path: Hashable, _x: torch.Tensor, _knobs: dict[str, Any]) -> tuple[Trace, float]:
    """The real batch-1 trace and its latency (ms): the fastest of a few runs, as ``timeit``
    advises, since a slower run measures whatever else the machine was doing (on a page load,
    the browser drawing the page on the same cores), not the model.

    Keyed by the image and the ``path`` the page expects the knobs to take (the exit that
    fires, the blocks that run), not by the knob values: every value taking the same path runs
    the same computation, so a slider move costs at most one measurement per path.
    """
    model = load_model(name)
    runs = [model.trace(_x, **_knobs) for _ in range(LATENCY_REPEATS)]
    return runs[0], min(t.latency_ms for t in runs)


def nearest_point(points: list[dict[str, Any]], value: float) -> dict[str, Any]:
    """The eval-table point measured at the knob value closest to ``value``."""
    return min(points, key=lambda p: abs(p["value"] - value))


def render_seen_image(picked: InputImage, size: int) -> None:
    seen = square_thumbnail(picked.image, size).resize((160, 160), Image.Resampling.NEAREST)
    st.image(seen, caption=f"What the model sees ({size}x{size}, enlarged)")


def render_prediction(trace: Trace, picked: InputImage, classes: tuple[str, ...], what: tuple[str, str]) -> None:
    """Prediction, one model-specific metric ``what`` = (label, value), and the true label."""
    m1, m2, m3 = st.columns(3)
    m1.metric("Prediction", classes[trace.prediction], f"{100 * trace.confidence:.1f}% probability",
              delta_color="off", delta_arrow="off")  # fmt: skip
    m2.metric(*what)
    if picked.label is None:
        m3.metric("True label", "unknown")
    else:
        verdict = "correct" if trace.prediction == picked.label else "wrong"
        m3.metric("True label", classes[picked.label], verdict, delta_color="off", delta_arrow="off")


def checked_table(name: str) -> dict[str, Any] | None:
    """The eval table when it was measured on the loaded weights; a warning and None if not."""
    table = eval_table(name)
    if table is None or not table_matches_weights(name):
        st.warning(
            f"No evaluation table for these weights: run `python -m models.evaluate --model {name} --write` "
            "to measure the test split."
        )
        return None
    return table
