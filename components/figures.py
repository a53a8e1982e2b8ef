"""Plotly figures built from traces and eval tables. Pure: data in, figure out.

Colours are shared by every view: what ran, what did not, what fired.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import plotly.colors
import plotly.graph_objects as go
import plotly.io as pio

from components.overlays import expert_colour
from models.core import Trace

RAN = "#1f77b4"
SKIPPED = "#d0d0d0"
FIRED = "#d62728"
EXIT = "#ff7f0e"
STATIC = "#7f7f7f"
# the accuracy curves' lines, one per model or knob: never the current point's red or the static grey
CURVE_COLOURS = (RAN, EXIT, "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
FONT = {"size": 13}
# a heatmap with a class per row and a colour bar: room for "automobile" and the bar's labels
CLASS_HEATMAP = {"l": 90, "r": 100, "b": 46}

# Whether a figure is built twice and the two compared (the test suite sets it: tests/conftest.py).
# The app builds its figures without plotly's property checks, which were most of what building
# the early-exit page's charts cost on a threshold move. The checks also rewrite a few shorthands
# (an axis title given as a string becomes ``{"text": ...}``, which the browser's plotly.js needs),
# so a figure the checks would change is an error: with this on, every figure the unit tests and
# the AppTests build, on every page, is built with the checks too and must come out the same.
CHECK = False


class Chart(go.Figure):
    """A figure as the app draws it: built without plotly's property checks (see :data:`CHECK`),
    and holding no copy of the theme's template.

    Plotly gives every new figure its own deep copy of the default template (Streamlit's theme,
    once Streamlit is imported), and copies it again in ``to_dict``, which ``st.plotly_chart``
    and ``plotly.io`` call to serialise a figure. Here the figure is built with an empty template
    and ``to_dict`` puts the default one in by reference, so that what is serialised is what
    plain plotly serialises (a unit test compares them). On an early-exit threshold move the four
    charts that change took 17 ms to build and 6 ms to serialise with plain plotly; built so from
    :func:`series` dicts, 1.6 and about 1 ms (stop 18)."""

    def __init__(self, data: Sequence[Any], layout: dict[str, Any]) -> None:
        data = list(data)
        super().__init__(data=data, layout=layout | {"template": {}}, _validate=False)
        if CHECK:  # the same figure as plain plotly builds it, and raises on a bad property
            checked, built = go.Figure(data=data, layout=layout).to_dict(), super().to_dict()
            checked["layout"].pop("template", None), built["layout"].pop("template", None)
            if changed := differences(checked, built):
                raise ValueError(f"plotly's checks would change this figure: write it as plotly stores it: {changed}")

    def to_dict(self) -> dict[str, Any]:
        spec = super().to_dict()
        default = pio.templates.default  # a registered template's name, or a template
        if default is None:
            spec["layout"].pop("template", None)
        else:
            spec["layout"]["template"] = (
                theme_template(default) if isinstance(default, str) else default.to_plotly_json()
            )
        return spec


def differences(checked: Any, built: Any, path: str = "") -> dict[str, Any]:
    """Where two figure specs differ: path -> the checked figure's value there."""
    if isinstance(checked, dict) and isinstance(built, dict):
        return {k: v for key in checked.keys() | built.keys()
                for k, v in differences(checked.get(key), built.get(key), f"{path}.{key}".lstrip(".")).items()}  # fmt: skip
    if isinstance(checked, np.ndarray) or isinstance(built, np.ndarray):  # the same numbers reach the browser
        same = np.shape(checked) == np.shape(built) and np.array_equal(np.asarray(checked), np.asarray(built))
        return {} if same else {path: checked}
    if isinstance(checked, list | tuple) and isinstance(built, list | tuple) and len(checked) == len(built):
        return {k: v for i, (c, b) in enumerate(zip(checked, built, strict=True))
                for k, v in differences(c, b, f"{path}[{i}]").items()}  # fmt: skip
    return {} if checked == built else {path: checked}


@functools.cache
def theme_template(name: str) -> dict[str, Any]:
    """A registered plotly template as JSON, built once and shared: read only."""
    return pio.templates[name].to_plotly_json()


def mflops_text(flops: float, decimals: int = 1, below: float = 0.05) -> str:
    """FLOPs as MFLOPs with ``decimals`` decimals; under ``below``, two significant digits, so
    that a small cost that is not zero (an exit's 0.005, a token fusion) does not read as 0."""
    m = flops / 1e6
    return f"{m:.{decimals}f}" if m == 0 or abs(m) >= below else f"{m:.2g}"


def shared_layout(*, height: int, title: str | None = None, margin: dict[str, int] | None = None,
                  showlegend: bool = False) -> dict:  # fmt: skip
    """The layout every figure shares. ``margin``: room in pixels for what sits outside the plot
    (tick labels, axis titles, a legend below, a colour bar), as much as it takes.

    Plotly grows a margin that is too small for its labels ("automargin"), but only after drawing
    the figure, and then draws it again. Streamlit draws a chart anew each time its figure
    changes, so every slider move paid for two drawings of each chart it changed: giving the room
    up front took the early-exit page's slider-to-figure time in Chromium from 560 to 294 ms
    (stop 15). The browser tests check that no chart of the model pages needs more room."""
    room = {"l": 10, "r": 10, "t": 40 if title else 10, "b": 10} | (margin or {})
    layout = {"height": height, "margin": room, "font": FONT, "showlegend": showlegend}
    return layout | ({"title": {"text": title}} if title else {})


def series(kind: str, **props: Any) -> dict[str, Any]:
    """One plotted series (a plotly trace: ``kind`` "scatter", "bar", "heatmap"), written as
    plotly stores it (titles as ``{"text": ...}``, colour scales as stops: :func:`colour_scale`).
    :class:`Chart` takes it without building plotly's checked trace object, which cost more than
    the rest of a figure; :data:`CHECK` compares the two."""
    return {"type": kind} | props


@functools.cache
def colour_scale(name: str) -> list[list]:
    """A named plotly colour scale as explicit stops: plotly.js knows some names too, with other
    colours ("Blues" among them), and :class:`Chart` does not rewrite the name. Shared: read only."""
    return plotly.colors.get_colorscale(name)


def axis(title: str, **props: Any) -> dict[str, Any]:
    """An axis with a title, as plotly stores it: the browser's plotly.js (3) draws no title
    given as a bare string, and :class:`Chart` does not rewrite it."""
    return {"title": {"text": title}} | props


def make_figure(
    data: Sequence[Any], *, height: int, title: str | None = None, margin: dict[str, int] | None = None,
    showlegend: bool = False, shapes: Sequence[dict] = (), annotations: Sequence[dict] = (), **layout: Any,
) -> go.Figure:  # fmt: skip
    """A figure built in one go: its traces, the shared layout (``margin``: see
    :func:`shared_layout`), and ``layout``'s own keys (axes as ``xaxis``/``yaxis`` dicts, shapes,
    annotations). Plotly checks a layout passed to the constructor once; ``update_layout``,
    ``update_xaxes`` and ``add_shape`` each walk the figure again, and together they were most of what building a chart cost on every slider move (an
    early-exit threshold move rebuilt four in stop 18); how it is built: :class:`Chart`."""
    extra = {"shapes": list(shapes)} if shapes else {}
    extra |= {"annotations": list(annotations)} if annotations else {}
    return Chart(data, shared_layout(height=height, title=title, margin=margin, showlegend=showlegend) | extra | layout)


def _hline(
    y: float, line: dict[str, Any], text: str, *, top: bool = False, left: bool = False, outside: bool = False
) -> tuple[dict, dict]:
    """A labelled horizontal line across the plot, as a shape and an annotation for
    :func:`make_figure`; with ``outside`` the label sits in the right margin, clear of the bars
    (give the layout room: ``right``)."""
    shape = {"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "y0": y, "y1": y, "line": line}
    if outside:
        return shape, {"xref": "x domain", "x": 1, "y": y, "text": text, "showarrow": False, "xanchor": "left",
                       "xshift": 4}  # fmt: skip
    return shape, {"xref": "x domain", "x": 0 if left else 1, "y": y, "text": text, "showarrow": False,
                   "xanchor": "left" if left else "right", "yanchor": "bottom" if top else "top"}  # fmt: skip


def exit_topk(exit_probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """For every exit, its ``k`` most likely classes with probabilities. ``exit_probs``: (K, C)."""
    order = np.argsort(-exit_probs, axis=1)[:, :k]
    return [[(classes[c], float(row[c])) for c in idx] for row, idx in zip(exit_probs, order, strict=True)]


def make_exit_strip(trace: Trace, classes: Sequence[str]) -> go.Figure:
    """The network as a strip: stage squares and exit diamonds; executed part coloured, the rest
    grey, the fired exit marked. Hover shows each unit's executed FLOPs."""
    fired = trace.extras["fired_exit"]
    exit_probs = trace.extras["exit_probs"]
    xs = np.arange(len(trace.units))
    last_ran = max(i for i, u in enumerate(trace.units) if u.executed)
    data = [
        series("scatter", x=xs, y=np.zeros_like(xs), mode="lines", line={"color": SKIPPED, "width": 3}, hoverinfo="skip"),
        series("scatter", x=xs[: last_ran + 1], y=np.zeros(last_ran + 1), mode="lines", line={"color": RAN, "width": 5},
                   hoverinfo="skip"),
    ]  # fmt: skip
    # one marker trace per kind (not one per unit): each trace costs the browser's plotly.js
    # its own drawing pass, and a path's strip is drawn anew whenever the path changes
    for kind in ("block", "exit"):
        idx = [i for i, u in enumerate(trace.units) if u.kind == kind]
        colours, widths, labels, hovers = [], [], [], []
        for i in idx:
            unit = trace.units[i]
            k = int(re.search(r"\d+$", unit.name).group())
            is_exit = kind == "exit"
            colours.append(
                (FIRED if unit.decision else EXIT) if is_exit and unit.executed else RAN if unit.executed else SKIPPED
            )
            widths.append(3 if is_exit and unit.decision else 1)
            labels.append(f"exit {k + 1}" if is_exit else f"stage {k + 1}")
            guess = ""
            if is_exit and exit_probs is not None:
                c = int(np.argmax(exit_probs[k]))
                says = "says" if unit.executed else "would say"  # not computed: from the all-exits pass
                guess = f"<br>{says} {classes[c]} ({exit_probs[k][c]:.0%})"
            status = "fired" if is_exit and unit.decision else "ran" if unit.executed else "not computed"
            hovers.append(f"{labels[-1]}: {status}<br>{mflops_text(unit.flops)} MFLOPs executed "
                          f"(static net: {mflops_text(unit.full_flops)}){guess}")  # fmt: skip
        data.append(
            series("scatter",
                x=idx, y=[0] * len(idx), mode="markers+text", text=labels, customdata=hovers,
                marker={"symbol": "diamond" if kind == "exit" else "square", "size": 34 if kind == "exit" else 44,
                        "color": colours, "line": {"width": widths, "color": "black"}},
                textposition="bottom center" if kind == "exit" else "top center",
                hovertemplate="%{customdata}<extra></extra>",
            )
        )  # fmt: skip
    fired_x = next(i for i, u in enumerate(trace.units) if u.kind == "exit" and u.decision)
    fired_label = {"x": fired_x, "y": 0.9, "text": f"<b>exit {fired + 1} fired</b>", "showarrow": True, "arrowhead": 2,
                   "ay": -10, "font": {"color": FIRED}}  # fmt: skip
    return make_figure(data, height=190, annotations=[fired_label], xaxis={"visible": False, "range": [-0.7, len(xs) - 0.3]},
                   yaxis={"visible": False, "range": [-1.6, 1.6]})  # fmt: skip


def make_exit_confidence(trace: Trace, threshold: float, classes: Sequence[str], criterion_label: str) -> go.Figure:
    """Each exit's confidence (from the all-exits record) against the threshold line. Exits the
    dynamic run did not evaluate are grey and hatched: their bars show what they would have said.
    Each exit's top class is written under its name, and the threshold's value in the right
    margin, so that no label collides with a bar or the line."""
    exit_probs = trace.extras["exit_probs"]
    scores = trace.extras["all_scores"]  # every exit's confidence, from the all-exits record
    exits = [u for u in trace.units if u.kind == "exit"]
    colours = [FIRED if u.decision else EXIT if u.executed else SKIPPED for u in exits]
    patterns = ["" if u.executed else "/" for u in exits]
    guesses = [classes[int(np.argmax(p))] for p in exit_probs]
    bars = series("bar",
        x=[f"exit {k + 1}<br><i>{guess}</i>" for k, guess in enumerate(guesses)], y=scores,
        marker={"color": colours, "pattern": {"shape": patterns}}, customdata=guesses,
        hovertemplate="confidence %{y:.3f}<br>top class %{customdata}<extra></extra>",
    )  # fmt: skip
    line, label = _hline(threshold, {"color": "black", "dash": "dash"}, f"threshold {threshold:.2f}", outside=True)
    return make_figure([bars], height=300, margin={"l": 72, "r": 100, "b": 56}, shapes=[line], annotations=[label],
                   yaxis=axis(criterion_label, range=[0, 1.05]))  # fmt: skip


def curve_colours(names: Iterable[str]) -> dict[str, str]:
    """Each accuracy curve's colour (name -> colour): :data:`CURVE_COLOURS` in turn. A page that
    draws a curve's mechanism in another chart too takes its colour from here, and passes the
    same map to :func:`make_accuracy_curve`."""
    return {name: CURVE_COLOURS[i % len(CURVE_COLOURS)] for i, name in enumerate(names)}


def make_accuracy_curve(
    curves: dict[str, dict[str, Any]],
    *,
    colours: dict[str, str] | None = None,
    current: dict[str, tuple[float, float]] | None = None,
    label_current: bool = False,
    budget: float | None = None,
) -> go.Figure:
    """Accuracy (%) vs mean MFLOPs per image.

    Args:
        curves: name -> ``{"points": [{"mflops", "accuracy", "value"}], "static": [{"mflops",
            "accuracy", "label"}], "value_label": knob name in the hover (default "threshold"),
            "static_name": the static markers' legend entry (default "static network")}``;
            the dynamic policy as a line with a dot on each measured setting, static settings as
            markers.
        colours: name -> line colour (default: :func:`curve_colours` in the curves' order).
        current: name -> (mflops, accuracy) of the operating point on screen.
        label_current: write each current point's name next to it (several on one chart).
        budget: mean MFLOPs to mark with a vertical line (Compare's budget).
    """
    data = []
    line_of = curve_colours(curves) | (colours or {})
    for name, curve in curves.items():
        pts = sorted(curve["points"], key=lambda p: p["mflops"])
        xs, ys = [p["mflops"] for p in pts], [100 * p["accuracy"] for p in pts]
        gaps = sweep_gaps(xs)
        # a dot on each swept setting, the line solid between neighbours and dotted across a gap
        # (block skipping between its cheapest threshold below 1.0 and every gated block
        # skipped): there it is drawn, not measured
        solid_x, solid_y = with_breaks(xs, gaps), with_breaks(ys, gaps)
        data.append(
            series("scatter",
                x=solid_x, y=solid_y, mode="lines+markers", name=name, connectgaps=False,
                line={"color": line_of[name]}, marker={"size": 5, "color": line_of[name]},
                customdata=with_breaks([p["value"] for p in pts], gaps),
                hovertemplate=curve.get("value_label", "threshold") + " %{customdata:.2f}<br>%{x:.1f} MFLOPs, "
                "%{y:.2f}%<extra>" + name + "</extra>",
            )
        )  # fmt: skip
        for i in gaps:
            data.append(series("scatter", x=xs[i : i + 2], y=ys[i : i + 2], mode="lines", showlegend=False,
                               name=f"{name}: no setting between", line={"color": line_of[name], "dash": "dot"},
                               hoverinfo="skip"))  # fmt: skip
        static = curve.get("static", [])
        if static:
            data.append(
                series("scatter",
                    x=[s["mflops"] for s in static], y=[100 * s["accuracy"] for s in static], mode="markers+text",
                    marker={"symbol": "square", "size": 9, "color": STATIC}, text=[s["label"] for s in static],
                    # the rightmost label above and to the left of its marker, so that neither the plot's
                    # edge nor the label of its neighbour (often just left of it, as exits 5 and 6) cuts it
                    textposition=["bottom right"] * (len(static) - 1) + ["top left"],
                    name=curve.get("static_name", "static network"),
                    cliponaxis=False,  # a label above a point near the top stays whole (the top margin has room)
                    hovertemplate="%{text}: %{x:.1f} MFLOPs, %{y:.2f}%<extra></extra>",
                )
            )  # fmt: skip
    # several current points (Compare) often sit close together: their labels take turns around
    # them, and each has its own star shape, so that the legend tells them apart too; a current
    # point named after a curve (Tokens: one setting per curve) takes the curve's colour
    positions = ("top left", "bottom right", "top right", "bottom left")
    symbols = ("star", "star-diamond", "star-triangle-up", "star-square")
    current = current or {}
    for i, (name, (mflops, acc)) in enumerate(current.items()):
        data.append(
            series("scatter",
                x=[mflops], y=[100 * acc], mode="markers+text" if label_current else "markers",
                name=f"{name} — now" if len(current) > 1 else "now",  # one: its curve is the only line
                text=[name], textposition=positions[i % len(positions)], cliponaxis=False,
                marker={"symbol": symbols[i % len(symbols)], "size": 18,
                        "color": line_of.get(name, FIRED) if len(current) > 1 else FIRED,
                        "line": {"width": 1, "color": "black"}},
                hovertemplate="current setting<br>%{x:.1f} MFLOPs, %{y:.2f}%<extra></extra>",
            )
        )  # fmt: skip
    marks: dict[str, Any] = {}
    if budget is not None:
        marks["shapes"] = [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": budget,
                "x1": budget,
                "y0": 0,
                "y1": 1,
                "line": {"color": "black", "dash": "dash", "width": 1.5},
            }
        ]
        # at the foot of the line: the stars' labels take the top of the plot
        marks["annotations"] = [{"xref": "x", "yref": "paper", "x": budget, "y": 0, "yanchor": "bottom",
                                 "xanchor": "left", "xshift": 4, "text": f"budget {budget:g}", "showarrow": False}]  # fmt: skip
    return make_figure(data, height=360, margin={"l": 70, "r": 16, "t": 36, "b": 120}, showlegend=True,
                   legend={"orientation": "h", "y": -0.25}, xaxis=axis("mean MFLOPs per test image"),
                   yaxis=axis("test top-1 accuracy (%)"), **marks)  # fmt: skip


GAP_FACTOR = 5.0  # a step this many times the sweep's median step is a gap: no setting measured in it


def sweep_gaps(xs: Sequence[float]) -> list[int]:
    """Indices ``i`` where the step from ``xs[i]`` to ``xs[i + 1]`` (sorted) is a gap."""
    steps = np.diff(np.asarray(xs, dtype=float))
    if len(steps) < 3:
        return []
    typical = float(np.median(steps[steps > 0])) if (steps > 0).any() else 0.0
    return [i for i, step in enumerate(steps) if typical > 0 and step > GAP_FACTOR * typical]


def with_breaks(values: Sequence[Any], gaps: Sequence[int]) -> list[Any]:
    """``values`` with a None after each gap's start: plotly breaks the line there."""
    out: list[Any] = []
    for i, v in enumerate(values):
        out.append(v)
        if i in gaps:
            out.append(None)
    return out


def block_label(i: int, per_stage: int) -> str:
    """``s2.b1``: stage and block within it, both from 1."""
    return f"s{i // per_stage + 1}.b{i % per_stage + 1}"


def make_block_path(trace: Trace) -> go.Figure:
    """The gated network as a row of layers: fixed layers dark, blocks that ran coloured by
    their gate probability, skipped blocks grey and crossed out (light grey alone read as a low
    probability on the colour scale); the line is the path this input took (it dips under a
    skipped block: the identity shortcut)."""
    units = [u for u in trace.units if u.kind != "gate"]
    per_stage = trace.extras["blocks_per_stage"]
    gates_on = any(p is not None for p in trace.extras["gate_probs"])
    xs = np.arange(len(units))
    path_y = [0.0 if u.executed else -0.75 for u in units]
    data = [series("scatter", x=xs, y=path_y, mode="lines", line={"color": RAN, "width": 4, "shape": "spline"},
                       hoverinfo="skip")]  # fmt: skip
    groups = {
        "layer": [i for i, u in enumerate(units) if u.kind == "layer"],
        "ran": [i for i, u in enumerate(units) if u.kind == "block" and u.executed],
        "skipped": [i for i, u in enumerate(units) if u.kind == "block" and not u.executed],
    }
    for group, idx in groups.items():
        if not idx:
            continue
        labels, hovers, probs = [], [], []
        for i in idx:
            u = units[i]
            if u.kind == "layer":
                labels.append(u.name)
                hovers.append(f"{u.name}: always runs<br>{u.flops / 1e6:.1f} MFLOPs")
                continue
            k = int(u.name[5:])
            probs.append(u.score)
            # rounded down: a gate of 0.998 skipped at threshold 1.0 must not read "1.00"
            gate = f"gate {math.floor(u.score * 100) / 100:.2f}" if u.score is not None else "gate off"
            labels.append(f"{block_label(k, per_stage)}<br>{gate}")
            status = "ran" if u.executed else "skipped (not computed)"
            hovers.append(f"block {block_label(k, per_stage)}: {status}<br>{gate}<br>"
                          f"{u.flops / 1e6:.1f} of {u.full_flops / 1e6:.1f} MFLOPs")  # fmt: skip
        marker: dict[str, Any] = {"symbol": "square", "size": 46, "line": {"width": 1, "color": "black"}}
        if group == "layer":
            marker["color"] = STATIC
        elif group == "skipped":
            marker.update(symbol="square-x", color=SKIPPED, line={"width": 1.5, "color": STATIC})
        elif gates_on:
            marker.update(color=probs, colorscale=colour_scale("Blues"), cmin=0, cmax=1,
                          colorbar={"title": {"text": "gate p<br>(ran)"}, "len": 0.9, "thickness": 12})  # fmt: skip
        else:
            marker["color"] = RAN
        data.append(
            series("scatter",
                x=idx, y=[0] * len(idx), mode="markers+text", marker=marker, text=labels, customdata=hovers,
                textposition="top center", hovertemplate="%{customdata}<extra></extra>",
            )
        )  # fmt: skip
    stages = []
    for stage, shape in enumerate(trace.extras["stage_shapes"]):
        xs_stage = [i for i, u in enumerate(units) if u.kind == "block" and int(u.name[5:]) // per_stage == stage]
        stages.append({"x": float(np.mean(xs_stage)), "y": 1.15, "text": f"<b>stage {stage + 1}</b>: {shape}",
                       "showarrow": False})  # fmt: skip
    return make_figure(data, height=240, margin={"r": 92}, annotations=stages, xaxis={"visible": False, "range": [-0.7, len(units) - 0.3]},
                   yaxis={"visible": False, "range": [-1.1, 1.35]})  # fmt: skip


# --- transformer: tokens and experts ------------------------------------------------------------


def vit_block_label(i: int) -> str:
    """``block 3``: transformer blocks counted from 1 on screen (``block2.*`` in unit names)."""
    return f"block {i + 1}"


def make_token_counts(traces: dict[str, Trace], colours: dict[str, str] | None = None) -> go.Figure:
    """Tokens (class token included) each block's attention ran on, one line per trace (the
    static network keeps every token in every block), in ``colours`` (name -> colour; by
    default grey, blue, orange, purple in turn): the page gives each mechanism the colour of its
    accuracy curve. Where lines share a count, it is written once; the lowest count of a block
    sits under its marker, the others above theirs."""
    data = []
    turn = dict(zip(traces, (STATIC, RAN, EXIT, CURVE_COLOURS[3]), strict=False))
    colour_of = turn | (colours or {})
    counts = [trace.extras["tokens_attn"] for trace in traces.values()]
    labels = token_count_labels(counts)
    for name, row, (text, where) in zip(traces, counts, labels, strict=True):
        colour = colour_of[name]
        data.append(
            series("scatter",
                x=[vit_block_label(i) for i in range(len(row))], y=row, mode="lines+markers+text", name=name,
                text=text, textposition=where, line={"color": colour},
                hovertemplate="%{x}: %{y} tokens<extra>" + name + "</extra>",
            )
        )  # fmt: skip
    top = max((max(row) for row in counts), default=1)  # room above the highest line for its counts
    return make_figure(data, height=300, margin={"l": 70, "b": 86}, showlegend=True, legend={"orientation": "h", "y": -0.2},
                       yaxis=axis("tokens into attention", range=[0, 1.15 * top]))  # fmt: skip


def token_count_labels(counts: Sequence[Sequence[int]], close: float = 0.1) -> list[tuple[list[str], list[str]]]:
    """Per line, the text written at each block and where (``top center`` / ``bottom center``).
    A count is written once per block, by the first line that has it. Going down a block's
    distinct counts, one within ``close`` (a share of the highest count on the chart) of a count
    written above its marker is written under its own, so that two close counts do not overlap."""
    labels = [([""] * len(row), ["top center"] * len(row)) for row in counts]
    near = close * max((max(row) for row in counts if len(row)), default=0)
    for block in range(len(counts[0]) if counts else 0):
        values = [row[block] for row in counts]
        where_of: dict[int, str] = {}
        above = None  # the last count written above its marker
        for value in sorted(set(values), reverse=True):
            under = above is not None and above - value < near
            where_of[value] = "bottom center" if under else "top center"
            above = None if under else value
        for line, ((text, where), value) in enumerate(zip(labels, values, strict=True)):
            where[block] = where_of[value]
            if values.index(value) == line:  # the first line with this count writes it
                text[block] = str(value)
    return labels


def make_patch_heatmap(values: np.ndarray, *, title: str, label: str, zmax: float | None = None) -> go.Figure:
    """An ``(8, 8)`` per-patch quantity (class-token attention, router confidence) on the grid,
    the image's top row at the top."""
    heat = series("heatmap",
        z=values, colorscale=colour_scale("Viridis"), zmin=0, zmax=zmax,
        colorbar={"title": {"text": label}, "thickness": 12},
        hovertemplate="patch row %{y}, column %{x}: %{z:.3f}<extra></extra>",
    )  # fmt: skip
    return make_figure([heat], height=260, title=title, margin={"r": 76}, xaxis={"visible": False},
                   yaxis={"autorange": "reversed", "visible": False, "scaleanchor": "x"})  # fmt: skip


def make_expert_load(record: dict[str, Any]) -> go.Figure:
    """One MoE layer on this image: tokens that chose each expert (demand, grey), tokens it served
    (load, in the expert's colour, over the grey), and its capacity (the buffer size; the rest is
    dropped). The experts are numbered under the axis title: in a narrow column "expert 1" ...
    labels turned and ran into each other. No legend: a legend shows one colour per series, and
    the served bars have one per expert; the page's caption says what the colours are."""
    experts = [str(e + 1) for e in range(len(record["load"]))]
    colours = [f"rgb{expert_colour(e)}" for e in range(len(experts))]  # the expert maps' colours
    data = [
        series("bar", x=experts, y=record["demand"], name="chosen", marker={"color": SKIPPED},
               hovertemplate="expert %{x}: chosen by %{y} tokens<extra></extra>"),
        series("bar", x=experts, y=record["load"], name="served", marker={"color": colours},
               hovertemplate="expert %{x}: served %{y} tokens<extra></extra>"),
    ]  # fmt: skip
    lines = []
    if record["capacity"] < record["tokens"]:
        lines.append(_hline(record["capacity"], {"color": FIRED, "dash": "dash"}, f"capacity {record['capacity']}",
                            top=True, left=True))  # fmt: skip
    return make_figure(data, height=280, margin={"l": 70, "t": 16, "b": 70}, barmode="overlay", shapes=[s for s, _ in lines],
                   annotations=[a for _, a in lines], xaxis=axis("expert", type="category"),
                   yaxis=axis("tokens", rangemode="tozero"))  # fmt: skip


def make_expert_share(shares: Sequence[Sequence[float]], layers: Sequence[str]) -> go.Figure:
    """Share of served expert choices each expert took on the test set, per MoE layer."""
    data = [
        series("bar", x=[f"expert {e + 1}" for e in range(len(share))], y=[100 * s for s in share], name=layer,
               hovertemplate="%{x}: %{y:.1f}% of choices<extra>" + layer + "</extra>")
        for layer, share in zip(layers, shares, strict=True)
    ]  # fmt: skip
    line, label = _hline(100 / len(shares[0]), {"color": STATIC, "dash": "dot"}, "balanced", top=True)
    return make_figure(data, height=280, margin={"l": 70, "b": 84}, showlegend=True,
                   legend={"orientation": "h", "y": -0.2}, shapes=[line],
                   annotations=[label], yaxis=axis("% of served choices", rangemode="tozero"))  # fmt: skip


def make_class_expert_heatmap(
    share: np.ndarray, classes: Sequence[str], layer: str, *, zmax: float | None = None
) -> go.Figure:
    """Rows: true class; columns: expert; cell: share of that class's served choices in one
    MoE layer.

    Args:
        share: ``(C, E)``, one layer of the eval table's ``class_expert_share``.
    """
    z = 100 * np.asarray(share)
    heat = series("heatmap",
        # scaled to the largest share (about 25% each when balanced): a 0-100 scale washes it out
        z=z, x=[f"expert {e + 1}" for e in range(z.shape[1])], y=list(classes), colorscale=colour_scale("Blues"),
        zmin=0, zmax=max(float(z.max()) if zmax is None else 100 * zmax, 1.0), text=np.round(z).astype(int),
        texttemplate="%{text}",
        colorbar={"title": {"text": "%"}},
        hovertemplate="%{y}: %{z:.1f}% of choices go to %{x}<extra></extra>",
    )  # fmt: skip
    return make_figure([heat], height=360, title=layer, margin=CLASS_HEATMAP, yaxis={"autorange": "reversed"})


ACCURACY_SPAN = 2.0  # points: the least a right-hand accuracy axis spans, so that 0.2 points look small


def make_knob_sweep(
    points: Sequence[dict[str, Any]], *, knob_label: str, bar_key: str, bar_label: str, current: float | None
) -> go.Figure:
    """One knob's sweep from an eval table: a bar per value (``bar_key``: MFLOPs, or the
    share of choices dropped) and test accuracy as a line on the right axis, which spans at
    least :data:`ACCURACY_SPAN` points; the bar of the ``current`` value in red (none when the
    current setting is not one of the sweep's)."""
    values = [p["value"] for p in points]
    bars = [p[bar_key] * (100 if bar_key.endswith("share") else 1) for p in points]
    now = next((i for i, v in enumerate(values) if current is not None and abs(v - current) < 1e-9), None)
    accuracy = [100 * p["accuracy"] for p in points]
    middle, half = (max(accuracy) + min(accuracy)) / 2, max(ACCURACY_SPAN, max(accuracy) - min(accuracy) + 0.4) / 2
    data = [
        series("bar", x=[f"{v:g}" for v in values], y=bars, name=bar_label,
               marker={"color": [FIRED if i == now else RAN for i in range(len(values))]},
               hovertemplate=f"{knob_label} %{{x}}: %{{y:.1f}}<extra>{bar_label}</extra>"),
        series("scatter", x=[f"{v:g}" for v in values], y=accuracy, yaxis="y2", name="test accuracy (%)",
                   mode="lines+markers", line={"color": EXIT}, hovertemplate="%{y:.2f}%<extra>test accuracy</extra>"),
    ]  # fmt: skip
    return make_figure(
        # t: a tick of the accuracy axis may fall on its range's top, half a label above the plot
        data, height=300, margin={"l": 76, "r": 96, "t": 20, "b": 100}, showlegend=True, legend={"orientation": "h", "y": -0.3},
        xaxis=axis(knob_label, type="category"), yaxis=axis(bar_label, rangemode="tozero"),
        yaxis2=axis("test accuracy (%)", overlaying="y", side="right", showgrid=False,
                    range=[middle - half, middle + half], tickmode="auto", nticks=5, tickformat=".1f"),
    )  # fmt: skip


def make_video_timeline(
    times: Sequence[float],
    mflops: Sequence[float],
    reused: Sequence[bool],
    decisions: Sequence[float],
    decision_label: str,
    predictions: Sequence[str],
    confidences: Sequence[float],
    *,
    current: int | None = None,
) -> go.Figure:
    """Per sampled frame: MFLOPs spent (reused frames spend none), the model's headline
    decision, and the predicted class with its confidence; ``current`` marks the scrubbed frame.

    Three rows on one time axis, where plotly's ``make_subplots(rows=3, shared_xaxes=True,
    vertical_spacing=0.06)`` puts them, but built in one go (:func:`make_figure`). The Video page
    rebuilds it on every scrub (the marked frame moves): through ``make_subplots`` and ``add_*``
    it took 30 to 42 ms to build and serialise on this CPU, built so about 2 ms (stop 21)."""
    times = list(times)
    hover = [f"{t:.2f} s: reused the last result" if r else f"{t:.2f} s: {m:.1f} MFLOPs"
             for t, m, r in zip(times, mflops, reused, strict=True)]  # fmt: skip
    data = [series("bar", x=times, y=[0 if r else m for m, r in zip(mflops, reused, strict=True)],
                   marker={"color": [SKIPPED if r else RAN for r in reused]}, customdata=hover,
                   hovertemplate="%{customdata}<extra></extra>", xaxis="x", yaxis="y")]  # fmt: skip
    if any(reused):
        data.append(series("scatter", x=[t for t, r in zip(times, reused, strict=True) if r], y=[0] * sum(reused),
                           mode="markers", marker={"symbol": "x", "color": STATIC, "size": 7},
                           hovertemplate="%{x:.2f} s: reused<extra></extra>", xaxis="x", yaxis="y"))  # fmt: skip
    data += [
        series("scatter", x=times, y=list(decisions), mode="lines+markers", line={"color": EXIT, "shape": "hv"},
               hovertemplate="%{x:.2f} s: %{y:.0f}<extra></extra>", xaxis="x2", yaxis="y2"),
        series("scatter", x=times, y=list(predictions), mode="markers", customdata=[100 * c for c in confidences],
               marker={"size": [6 + 14 * c for c in confidences], "color": list(confidences),
                       "colorscale": colour_scale("Blues"), "cmin": 0, "cmax": 1, "line": {"width": 0.5, "color": "black"}},
               hovertemplate="%{x:.2f} s: %{y} (%{customdata:.0f}%)<extra></extra>", xaxis="x3", yaxis="y3"),
    ]  # fmt: skip
    titles = ("MFLOPs spent", decision_label, "prediction (marker size: confidence)")
    rows = len(titles)
    spacing = 0.06
    height = (1 - spacing * (rows - 1)) / rows
    domains = [[1 - height - i * (height + spacing), 1 - i * (height + spacing)] for i in range(rows)]
    domains[-1][0] = 0.0  # exactly, as plotly has it: the sums above leave a rounding error
    suffixes = ["" if i == 0 else str(i + 1) for i in range(rows)]  # plotly's axis names: x, x2, x3
    layout: dict[str, Any] = {}
    for i, (n, domain) in enumerate(zip(suffixes, domains, strict=True)):
        shared = {"matches": f"x{rows}", "showticklabels": False}  # the bottom row's time axis, drawn there only
        layout[f"xaxis{n}"] = {"anchor": f"y{n}", "domain": [0.0, 1.0]} | (
            axis("time in the video (s)") if i == rows - 1 else shared
        )
        layout[f"yaxis{n}"] = {"anchor": f"x{n}", "domain": domain}
    if decisions and all(float(d).is_integer() for d in decisions):  # exits, blocks, tokens: no ticks between counts
        layout["yaxis2"] |= {
            "tickformat": "d",
            "dtick": max(1, math.ceil((max(decisions) - min(decisions)) / 6)),
            "range": [min(decisions) - 0.5, max(decisions) + 0.5],
        }  # no tick past the counts
    annotations = [{"font": {"size": 16}, "showarrow": False, "text": title, "x": 0.5, "xanchor": "center",
                    "xref": "paper", "y": domain[1], "yanchor": "bottom", "yref": "paper"}
                   for title, domain in zip(titles, domains, strict=True)]  # fmt: skip
    shapes = []
    if current is not None:  # across the three rows
        shapes = [{"line": {"color": FIRED, "dash": "dot", "width": 2}, "type": "line", "x0": times[current],
                   "x1": times[current], "xref": f"x{n}", "y0": 0, "y1": 1, "yref": f"y{n} domain"}
                  for n in suffixes]  # fmt: skip
    # room for the first row's title, a class name per row of the predictions ("automobile")
    # and the time axis with its title
    return make_figure(data, height=580, margin={"l": 90, "t": 36, "b": 70}, shapes=shapes, annotations=annotations,
                       **layout)  # fmt: skip


def make_block_density(point: dict[str, Any], per_stage: int) -> go.Figure:
    """Per masked block on the test set at one threshold: the share of positions its mask kept,
    and the share of its dense convolution FLOPs that ran (the first convolution runs on the
    mask grown by its 3x3 kernel, so it costs more than the mask's share)."""
    names = [block_label(i, per_stage) for i in range(len(point["block_density"]))]
    data = [
        series("bar", x=names, y=[100 * d for d in point["block_density"]], name="positions kept", marker={"color": RAN},
               hovertemplate="block %{x}: %{y:.1f}% of positions<extra></extra>"),
        series("bar", x=names, y=[100 * c for c in point["block_conv_share"]], name="conv FLOPs run", marker={"color": EXIT},
               hovertemplate="block %{x}: %{y:.1f}% of its conv FLOPs<extra></extra>"),
    ]  # fmt: skip
    return make_figure(data, height=320, margin={"l": 76, "t": 20, "b": 104}, showlegend=True, barmode="group",
                   legend={"orientation": "h", "y": -0.3},
                   xaxis=axis("block (stage.block)"), yaxis=axis("% (test-set mean)", range=[0, 100]))  # fmt: skip
