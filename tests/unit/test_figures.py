"""How the app builds its plotly figures (``components.figures.Chart``): what it serialises is
what plain plotly would, and under ``CHECK`` (every test) a figure that plotly's property checks
would reject or rewrite is an error."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from components import figures
from components.figures import axis, colour_scale, make_figure, series

DATA = [go.Bar(x=["exit 1", "exit 2"], y=[0.4, 0.9], marker={"color": ["#d62728", "#ff7f0e"]})]
LAYOUT = {"xaxis": {"title": {"text": "exit"}}, "yaxis": {"range": [0, 1.05]}}


@pytest.mark.parametrize("template", ["streamlit", "plotly", None])
def test_a_chart_serialises_as_plain_plotly_does(monkeypatch, template):
    import streamlit.elements.plotly_chart  # noqa: F401  registers Streamlit's theme template

    monkeypatch.setattr(pio.templates, "default", template)
    chart = make_figure(DATA, height=300, margin={"l": 72}, **LAYOUT)
    plain = go.Figure(data=DATA, layout=figures.shared_layout(height=300, margin={"l": 72}) | LAYOUT)
    assert chart.to_dict() == plain.to_dict()
    assert json.loads(pio.to_json(chart)) == json.loads(pio.to_json(plain))  # keys may come in another order
    if template is not None:  # the theme reaches the browser, though the figure holds no copy of it
        assert chart.to_dict()["layout"]["template"] == pio.templates[template].to_plotly_json() != {}
        assert chart.layout.template.to_plotly_json() == {}


HEAT = {"z": [[0.0, 1.0]]}


@pytest.mark.parametrize(
    ("data", "layout", "error"),
    [(DATA, {"xaxis": {"titel": "exit"}}, "titel"),  # a misspelt property: plotly.js would ignore it
     (DATA, {"xaxis": {"title": "exit"}}, "checks would change"),  # plotly.js 3 draws no title from a string
     ([series("heatmap", **HEAT, colorscale="Blues")], {}, "colorscale"),  # plotly.js's "Blues" has other colours
     ([series("heatmap", **HEAT, colorbar={"title": "%"})], {}, "colorbar.title"),
     ],
)  # fmt: skip
def test_a_figure_plotly_would_reject_or_rewrite_fails_the_tests(monkeypatch, data, layout, error):
    assert figures.CHECK  # as in every test (tests/conftest.py)
    with pytest.raises(ValueError, match=error):
        make_figure(data, height=300, **layout)
    monkeypatch.setattr(figures, "CHECK", False)  # the app builds it as written
    assert make_figure(data, height=300, **layout).to_dict()["layout"].get("xaxis") == layout.get("xaxis")


def test_the_helpers_write_what_plotly_would():
    heat = series("heatmap", **HEAT, colorscale=colour_scale("Viridis"), colorbar={"title": {"text": "%"}})
    make_figure([heat], height=300, xaxis=axis("exit", dtick=1))  # CHECK: no error


def test_each_swept_setting_is_a_dot_on_its_curve():
    """A straight stretch of a curve between two measured settings far apart (block skipping
    between its last threshold below 1.0 and every block skipped) must not look measured."""
    from components.figures import make_accuracy_curve

    points = [
        {"mflops": m, "accuracy": a, "value": v} for m, a, v in ((115, 0.64, 1.0), (207, 0.90, 0.95), (240, 0.91, 0))
    ]
    line = make_accuracy_curve({"gates": {"points": points}}).to_dict()["data"][0]
    assert "markers" in line["mode"] and line["marker"]["color"] == line["line"]["color"]
    assert list(line["x"]) == [115, 207, 240]  # one dot per swept setting, in order of cost


def test_each_curves_current_point_takes_the_curves_colour():
    from components.figures import FIRED, STATIC, make_accuracy_curve

    def curve(acc):
        return {"points": [{"mflops": m, "accuracy": acc, "value": v} for m, v in ((50, 0.3), (100, 0.9))]}

    curves = {"prune": curve(0.8), "merge": curve(0.79)}
    both = make_accuracy_curve(curves, current={"prune": (100, 0.8), "merge": (50, 0.79)}).to_dict()["data"]
    lines, stars = both[:2], both[2:]
    assert [s["marker"]["color"] for s in stars] == [ln["line"]["color"] for ln in lines]
    assert len({ln["line"]["color"] for ln in lines} | {FIRED, STATIC}) == 4  # two colours, neither red nor grey
    one = make_accuracy_curve(curves, current={"prune": (100, 0.8)}).to_dict()["data"]
    assert one[-1]["marker"]["color"] == FIRED and one[-1]["name"] == "now"  # a single current point: red
    compare = make_accuracy_curve(curves, current={"#1": (100, 0.8), "#2": (50, 0.79)}).to_dict()["data"]
    assert [s["marker"]["color"] for s in compare[2:]] == [FIRED, FIRED]  # configurations: red, labelled


def test_the_expert_load_has_no_legend_to_misname_its_colours():
    """The served bars take each expert's colour, as on the maps; a legend would show one of
    them as "served", so the chart has none and the page's caption names the colours."""
    from components.figures import SKIPPED, make_expert_load
    from components.overlays import expert_colour

    record = {"load": [9, 9, 3, 9], "demand": [47, 19, 3, 53], "capacity": 9, "tokens": 65}
    fig = make_expert_load(record).to_dict()
    demand, served = fig["data"]
    assert demand["marker"]["color"] == SKIPPED
    assert list(served["marker"]["color"]) == [f"rgb{expert_colour(e)}" for e in range(4)]
    assert not fig["layout"]["showlegend"]
    assert any(a["text"] == "capacity 9" for a in fig["layout"]["annotations"])
