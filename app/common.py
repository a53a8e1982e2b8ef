"""What every model page shares: preprocessing cache, the prediction header, table lookups."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import streamlit as st
import torch
from PIL import Image

from app import state
from app.inputs import InputImage, current_input
from app.models_cache import eval_table, load_model, table_matches_weights, use_inference_threads
from components.images import square_thumbnail, to_model_input
from components.render import LATENCY_REPEATS, Timing, render_knobs
from models.core import DynamicModel, Trace


@st.cache_data(max_entries=64, show_spinner=False)
def model_input(name: str, key: str, _image: Image.Image) -> torch.Tensor:
    """The card's preprocessing of one image, keyed by its content hash."""
    model = load_model(name)
    return to_model_input(_image, size=model.input_size, mean=model.mean, std=model.std)


@st.cache_resource(max_entries=32, show_spinner=False)
def thumbnail(key: str, size: int, _image: Image.Image) -> Image.Image:
    """``square_thumbnail`` of one input (keyed by its content hash), once per size: from a
    large upload (shrunk to 1024 pixels a side on loading) it took 6-9 ms, and the pages asked
    for two or three of them on every knob move. One image shared read-only by every page and
    session."""
    return square_thumbnail(_image, size)


@st.cache_data(max_entries=256, show_spinner=False)
def path_latency(name: str, key: str, path: Hashable, _x: torch.Tensor, _knobs: dict[str, Any]) -> tuple[Trace, Timing]:
    """The real batch-1 trace, and its latency and the static network's latency on the same
    image, each the fastest of a few runs, as ``timeit`` advises: a slower run measures
    whatever else the machine was doing (on a page load, the browser drawing the page on the
    same cores), not the model. The two are measured in turn, run for run, so that their ratio
    holds even while that load comes and goes; the static network's own path is one
    measurement, so it is never "slower than itself". How far the runs varied is kept too: when
    the machine stays busy for all of them, the fastest is slow as well, and the page says so.

    Keyed by the image and the ``path`` the page expects the knobs to take (the exit that
    fires, the blocks that run), not by the knob values: every value taking the same path runs
    the same computation, so a slider move costs at most one measurement per path.
    """
    use_inference_threads()  # this script run's thread may be new: measure with the app's threads
    model = load_model(name)
    static = model.runs_static(**_knobs)
    runs, static_ms = [], []
    for _ in range(LATENCY_REPEATS):
        runs.append(model.trace(_x, **_knobs))
        if not static:
            static_ms.append(model.trace(_x, **model.static_knobs).latency_ms)
    own = [t.latency_ms for t in runs]
    full = static_ms or own
    spread = max(max(times) / min(times) for times in (own, full))
    return runs[0], Timing(min(own), min(full), spread)


def nearest_point(points: list[dict[str, Any]], value: float) -> dict[str, Any]:
    """The eval-table point measured at the knob value closest to ``value``."""
    return min(points, key=lambda p: abs(p["value"] - value))


def render_seen_image(picked: InputImage, size: int) -> None:
    seen = thumbnail(picked.key, size, picked.image).resize((160, 160), Image.Resampling.NEAREST)
    width, height = picked.image.size
    crop = "" if width == height else ", the centre square of the image"  # as square_thumbnail crops
    st.image(seen, caption=f"What the model sees ({size}x{size}{crop}, enlarged)")


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


def render_page_header(title: str, caption: str) -> InputImage | None:
    """Title, one-line summary, and the sidebar's image; a hint and None when there is none."""
    st.title(title)
    st.caption(caption)
    picked = current_input()
    if picked is None:
        st.info("Choose an image in the sidebar: upload one, pick a CIFAR-10 test image, or use an example photo.")
    return picked


def render_table_header(
    name: str, table: dict[str, Any], point: dict[str, Any], *, full_name: str, full_title: str, knob: str = "threshold",
    at: str | None = None,
) -> None:  # fmt: skip
    """The test-set panel's heading and its three numbers: accuracy and mean compute at the
    current setting of ``knob`` (or ``at``: where the point was measured, when that is not the
    current setting), and the static network (``full_name`` in the delta, ``full_title`` as
    label)."""
    full = table["full"]
    st.subheader(f"On the CIFAR-10 test set ({table['n']:,} images)")
    st.caption(f"From `assets/eval/{name}.json`, written by `python -m models.evaluate --model {name} --write`.")
    a, b, c = st.columns(3)
    gap = 100 * (point["accuracy"] - full["accuracy"])
    same = abs(gap) < 0.005  # shown as 0.00: no arrow, no colour (a green "+0.00" read as better)
    a.metric(f"Test accuracy at {at or 'this ' + knob}", f"{100 * point['accuracy']:.2f}%",
             f"{0 if same else gap:{'.2f' if same else '+.2f'}} pts vs {full_name}",
             delta_color="off" if same else "normal", delta_arrow="off" if same else "auto")  # fmt: skip
    b.metric("Mean compute", f"{point['mflops']:.1f} MFLOPs", f"{100 * point['mflops'] / full['mflops']:.0f}% of full",
             delta_color="off", delta_arrow="off")  # fmt: skip
    c.metric(full_title, f"{100 * full['accuracy']:.2f}%", f"{full['mflops']:.1f} MFLOPs",
             delta_color="off", delta_arrow="off")  # fmt: skip


def render_explanation(title: str, text: str, model: DynamicModel, extra_papers: tuple[str, ...] = ()) -> None:
    """The page's explanation, how the model's weights were made (from its card), and papers."""
    with st.expander(title, expanded=False):
        st.markdown(text)
        st.markdown(model.card.provenance())
        st.markdown("\n".join(f"- {paper}" for paper in (*model.papers, *extra_papers)))


def render_model_page(
    name: str,
    title: str,
    caption: str,
    run: Callable[[InputImage, torch.Tensor], None],
    explanation: tuple[str, str],
    extra_papers: tuple[str, ...] = (),
) -> None:
    """A page whose knobs need a forward pass: header, then ``run`` (an ``st.fragment`` that
    reruns alone when its knobs move) on the chosen image, then the explanation (title, text)
    with the model's papers."""
    model = load_model(name)
    picked = render_page_header(title, caption)
    if picked is None:
        return
    run(picked, model_input(name, picked.key, picked.image))
    render_explanation(*explanation, model, extra_papers)


def render_knobs_or_static(model: DynamicModel, toggle: str, help: str, *, toggle_key: str) -> dict[str, Any]:
    """A toggle that forces the static network, then the model's knobs (disabled while it is
    on); returns the knob values to run, the static ones when forced."""
    forced = st.toggle(toggle, key=state.knob_key(model.name, toggle_key), help=help)
    defaults = {k.key: model.default_knob(k) for k in model.knobs}
    knobs = render_knobs(model.knobs, defaults, key_of=lambda key: state.knob_key(model.name, key), disabled=forced)
    return dict(model.static_knobs) if forced else knobs
