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

    steps = [(207 + i, 0.90, 0.95 - i / 100) for i in range(6)]  # settings a step apart, then a gap to 115
    points = [{"mflops": m, "accuracy": a, "value": v} for m, a, v in [(115, 0.64, 1.0), *steps]]
    line, *dotted = make_accuracy_curve({"gates": {"points": points}}).to_dict()["data"]
    assert "markers" in line["mode"] and line["marker"]["color"] == line["line"]["color"]
    assert list(line["x"]) == [115, None, *(m for m, _, _ in steps)]  # a dot per setting, the line broken at the gap
    (gap,) = dotted
    assert list(gap["x"]) == [115, 207] and gap["line"]["dash"] == "dot" and not gap["showlegend"]


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


def test_curves_take_the_colours_a_page_gives_them():
    from components.figures import CURVE_COLOURS, curve_colours, make_accuracy_curve

    points = [{"mflops": m, "accuracy": 0.5, "value": m} for m in (50, 100)]
    curves = {"merge": {"points": points}, "prune": {"points": points}}  # not in the page's order
    line = curve_colours(["prune", "merge"])
    assert line == {"prune": CURVE_COLOURS[0], "merge": CURVE_COLOURS[1]}
    data = make_accuracy_curve(curves, colours=line, current={"prune": (50, 0.5), "merge": (100, 0.5)}).to_dict()[
        "data"
    ]
    assert [(d["name"], d["line"]["color"]) for d in data[:2]] == [("merge", line["merge"]), ("prune", line["prune"])]
    assert [d["marker"]["color"] for d in data[2:]] == [line["prune"], line["merge"]]  # the stars too


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


def test_the_exit_strip_says_what_a_skipped_exit_would_say_and_shows_small_costs():
    """An exit the run did not evaluate "would say" its class (from the all-exits pass), and an
    exit classifier's 0.005 MFLOPs do not read as 0.0."""
    import torch

    import models
    from components.figures import make_exit_strip, mflops_text

    model = models.get("early_exit")
    x = torch.rand(1, 3, 32, 32)
    record = model.trace_all(x)
    trace = model.redecide(record, threshold=0.0)  # exit 1 fires: the later exits were not evaluated
    hovers = [h for t in make_exit_strip(trace, model.card.classes).to_dict()["data"] for h in t.get("customdata", [])]
    assert any("not computed" in h and "would say" in h for h in hovers)
    assert not any("not computed" in h and "<br>says" in h for h in hovers)
    assert mflops_text(5120) == "0.0051" and mflops_text(0) == "0.0" and mflops_text(43.7e6) == "43.7"


def test_a_skipped_gate_never_reads_as_reaching_the_threshold():
    """A gate of 0.998 skipped at threshold 1.0 reads "gate 0.99", not a rounded "gate 1.00"."""
    import re

    import torch

    import models
    from components.figures import make_block_path

    model = models.get("block_skip")
    trace = model.trace(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), threshold=1.0)
    scores = [u.score for u in trace.units if u.kind == "block"]  # gate5 was 0.9996 on one such image
    texts = [t for d in make_block_path(trace).to_dict()["data"] for t in (d.get("text") or []) if isinstance(t, str)]
    shown = [float(m) for t in texts for m in re.findall(r"gate (\d\.\d\d)", t)]
    assert len(shown) == len(scores) and all(s <= p for s, p in zip(shown, scores, strict=True))
    assert all(s < 1.0 for s, p in zip(shown, scores, strict=True) if p < 1.0)


def test_side_by_side_expert_heatmaps_can_share_one_colour_scale():
    import numpy as np

    from components.figures import make_class_expert_heatmap

    share = np.full((10, 4), 0.25)
    heat = make_class_expert_heatmap(share, [str(c) for c in range(10)], "block 3", zmax=0.4).to_dict()["data"][0]
    assert heat["zmax"] == 40.0  # the larger layer's maximum, in %


def test_the_token_count_lines_take_the_colours_they_are_given():
    """The Tokens page gives each mechanism's line its accuracy curve's colour (by name): an
    extra "this setting" line must not shift prune to orange and merge to red."""
    from types import SimpleNamespace

    from components.figures import CURVE_COLOURS, STATIC, make_token_counts

    traces = {name: SimpleNamespace(extras={"tokens_attn": [65, 65, 55, 45, 38, 38]})
              for name in ("every token", "this setting", "prune (EViT), 0.8", "merge (ToMe), 10")}  # fmt: skip
    colours = {"every token": STATIC, "this setting": CURVE_COLOURS[3], "prune (EViT), 0.8": CURVE_COLOURS[0],
               "merge (ToMe), 10": CURVE_COLOURS[1]}  # fmt: skip
    lines = make_token_counts(traces, colours).to_dict()["data"]
    assert {line["name"]: line["line"]["color"] for line in lines} == colours


def test_the_decision_timeline_spans_only_the_counts_it_shows():
    from components.figures import make_video_timeline

    fig = make_video_timeline([0.0, 0.5, 1.0], [90.0] * 3, [False] * 3, [6, 6, 6], "exit that fired", ["cat"] * 3,
                              [0.9] * 3).to_dict()  # fmt: skip
    assert list(fig["layout"]["yaxis2"]["range"]) == [5.5, 6.5]  # every frame fired exit 6: no "exit 7" tick


def test_merged_token_maps_have_a_colour_for_each_group_seen():
    """Merging 16 tokens a layer left up to 18 merged groups on one map (noise images)."""
    from components.overlays import PALETTE

    assert len(set(PALETTE)) == len(PALETTE) >= 18
