"""Any model's own picture, headline decision and the comparison PNG, from real traces of
untrained models (the dispatch must not depend on weights)."""

from __future__ import annotations

import io

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

import models
from components.export import Panel, make_comparison_png
from components.overlays import make_compute_count, make_heat_overlay, make_mask_overlay
from components.pictures import decision_of, make_unit_flops, mechanism_picture
from models.core import Curve

IMAGE = Image.new("RGB", (192, 192), (120, 80, 40))
KIND = {"early_exit": go.Figure, "block_skip": go.Figure, "vit_tokens": Image.Image, "pixel_mask": Image.Image}
LABEL = {"early_exit": "exit that fired", "block_skip": "blocks run", "vit_tokens": "tokens left",
         "pixel_mask": "% of conv FLOPs computed"}  # fmt: skip


@pytest.fixture(scope="module", params=models.available())
def trace(request):
    torch.manual_seed(0)
    model = models.model_class(request.param)().eval()
    return model.trace(torch.randn(1, 3, model.input_size, model.input_size))


def test_every_model_gets_its_own_picture_and_decision(trace):
    picture = mechanism_picture(trace, IMAGE, [f"c{i}" for i in range(10)])
    assert isinstance(picture, KIND[trace.model])
    if isinstance(picture, Image.Image):
        assert picture.size == IMAGE.size
    decision = decision_of(trace)
    assert decision.label == LABEL[trace.model] and decision.value >= 0 and decision.text


def test_the_comparison_png_has_one_column_per_configuration(trace):
    panel = Panel("title", ("line one", "a much longer line " * 5), IMAGE, trace)
    png = make_comparison_png([panel, panel, panel])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > 2 * image.size[1] * 0.5


def test_unknown_traces_get_the_generic_unit_chart(trace):
    fig = make_unit_flops(trace)
    assert list(fig.data[1].y) == [u.flops / 1e6 for u in trace.units]


def test_compute_count_adds_the_blocks_that_computed_each_pixel():
    a = np.array([[1, 0], [0, 0]], bool)  # one coarse cell
    b = np.ones((4, 4), bool)
    count = make_compute_count([a, b], 8)
    assert count.shape == (8, 8) and count[:4, :4].min() == 2 and count[4:, 4:].max() == 1


def test_mask_overlay_darkens_only_what_was_not_computed():
    img = Image.new("RGB", (8, 8), (200, 200, 200))
    out = np.asarray(make_mask_overlay(img, np.array([[True, False], [False, False]])))
    assert (out[:4, :4] == 200).all() and (out[4:, 4:] < 200).all()
    heat = make_heat_overlay(img, np.zeros((2, 2)), vmax=0)
    assert heat.size == (8, 8)


def test_a_curve_matches_its_knobs_and_meets_a_budget_from_below():
    points = [{"value": v, "mflops": m, "accuracy": a} for v, m, a in [(0.2, 100, 0.8), (0.5, 60, 0.7), (0.8, 30, 0.5)]]
    curve = Curve("prune", "keep", {"mode": "prune"}, points)
    assert curve.matches({"mode": "prune", "keep": 0.3}) and not curve.matches({"mode": "merge"})
    assert curve.within_budget(70) == (points[1], True)
    assert curve.within_budget(100) == (points[0], True)
    assert curve.within_budget(10) == (points[2], False)
    assert curve.knobs_at(points[2], {"mode": "prune", "keep": 0.3, "other": 1}) == {
        "mode": "prune",
        "keep": 0.8,
        "other": 1,
    }
    assert curve.nearest({"keep": 0.45}) == points[1]
    # Compare shows a test-set point only when it was measured at the knob (within half a step)
    assert curve.measured_at({"keep": 0.5}, tolerance=0.025) == points[1]
    assert curve.measured_at({"keep": 0.45}, tolerance=0.025) is None


def test_each_current_point_on_a_shared_curve_chart_has_its_own_marker():
    """Compare draws every configuration's current point on one chart: the legend must tell them
    apart, not show the same red star twice."""
    from components.figures import make_accuracy_curve

    curve = {
        "points": [{"mflops": 10.0, "accuracy": 0.5, "value": 0.1}, {"mflops": 20.0, "accuracy": 0.6, "value": 0.2}]
    }
    fig = make_accuracy_curve(
        {"a": curve, "b": curve}, current={"#1 a": (10.0, 0.5), "#2 b": (20.0, 0.6)}, label_current=True
    )
    symbols = [t.marker.symbol for t in fig.data if t.name.endswith(" — now")]
    assert len(symbols) == 2 and len(set(symbols)) == 2


def test_the_traces_download_gives_one_latency_per_configuration():
    """The JSON download's trace carries the latency the page showed (the fastest repeated run),
    not the first run's, which the trace was made with."""
    import json

    from components.export import comparison_json

    model = models.get("early_exit")
    trace = model.trace(torch.rand(1, 3, 32, 32))
    shown = trace.latency_ms / 2
    row = {"model": "early_exit", "latency_ms": shown, "full_latency_ms": 9.0, "latency_spread": 1.1,
           "test_point": None, "trace": trace}  # fmt: skip
    out = json.loads(comparison_json("cat.jpg", [row]))
    assert out["input"] == "cat.jpg"
    (config,) = out["configurations"]
    assert config["latency_ms"] == config["trace"]["latency_ms"] == shown
    assert config["trace"]["flops"] == trace.flops and config["trace"]["knobs"] == trace.knobs
