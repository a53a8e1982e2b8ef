"""Compare: two to four configurations (model + knob values) side by side on the same image, at
a budget of mean compute when asked, with every model's accuracy-compute curve on one chart."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import streamlit as st
from PIL import Image

from app import state
from app.common import LATENCY_REPEATS, model_input, path_latency, render_page_header, thumbnail
from app.inputs import InputImage
from app.models_cache import eval_table, load_model, table_matches_weights
from components.export import Panel, comparison_json, make_comparison_png
from components.figures import make_accuracy_curve
from components.pictures import decision_of, mechanism_picture
from components.render import NOISY_SPREAD, Timing, current_index, current_value, render_knobs
from models import available, model_class
from models.core import Curve, DynamicModel, Trace

MAP_SIDE = 192  # pixels of each picture over the image (a multiple of every mask and patch grid)
COUNTS = (2, 3, 4)


@dataclass(frozen=True)
class Config:
    """One column of the comparison: what was asked and what it did on this image."""

    index: int
    name: str
    trace: Trace
    timing: Timing  # and the model's static network on this image, measured alongside
    curve: Curve | None  # the eval-table curve these knobs lie on, if any
    point: dict[str, Any] | None  # its point measured at these knobs, if any

    @property
    def latency_ratio(self) -> str:
        return f"{self.timing.ratio:.2f}x its full network" + (" (rough)" if self.timing.noisy else "")

    @property
    def label(self) -> str:
        return f"#{self.index + 1} {short_title(self.name)}"


def short_title(name: str) -> str:
    """A model's title up to its first parenthesis or colon: "Block skipping", "Vision transformer"."""
    return re.split(r" \(|:", model_class(name).title)[0]


def knob_key(i: int, name: str, knob: str) -> str:
    return state.compare_key(i, f"{name}:{knob}")


def current_knobs(i: int, model: DynamicModel) -> dict[str, Any]:
    """Configuration ``i``'s knob values as its widgets hold them (defaults before first draw)."""
    return {k.key: st.session_state.get(knob_key(i, model.name, k.key), model.default_knob(k)) for k in model.knobs}


def table_of(name: str) -> dict[str, Any] | None:
    return eval_table(name) if table_matches_weights(name) else None


def match_budget(chosen: list[str]) -> None:
    """Button callback: move each configuration's swept knob, along the curve its other knobs
    lie on, to the point whose test-set mean compute is closest to the budget from below. A
    configuration whose knobs lie on no curve (the transformer's mechanisms were swept one at a
    time, the others static) is left as it is, and says so. The budget is read here, not passed
    from the run that drew the button (it may be older)."""
    budget = st.session_state[state.COMPARE_BUDGET]
    st.session_state[state.COMPARE_BUDGET_VALUE] = budget  # the budget shown, moved or not (the captions' key)
    matched = {}
    for i, name in enumerate(chosen):
        model, table = load_model(name), table_of(name)
        if table is None:
            continue
        knobs = current_knobs(i, model)
        curve = model.curve_of(table, knobs)
        if curve is None:
            matched[i] = (name, knobs, budget, "Not matched: the test set was swept one mechanism at a time, the "
                          "others static, and these settings lie on none of its curves.")  # fmt: skip
            continue
        point, fits = curve.within_budget(budget)
        new = curve.knobs_at(point, knobs)
        for key, value in new.items():
            st.session_state[knob_key(i, name, key)] = value
        reach = "" if fits else " (its cheapest setting: the budget is out of reach)"
        matched[i] = (name, new, budget, f"Matched to the budget: {curve.knob} {point['value']:g}: "
                      f"{point['mflops']:.1f} mean MFLOPs{reach}")  # fmt: skip
    st.session_state[state.COMPARE_MATCHED] = matched


def render_budget(chosen: list[str]) -> float | None:
    """The budget slider over the range the chosen models' curves span, and the button; the
    budget it shows (None without eval tables)."""
    spans = []
    for name in chosen:
        table = table_of(name)
        if table is not None:
            mflops = [p["mflops"] for c in load_model(name).curves(table) for p in c.points]
            spans.append((min(mflops), max(mflops)))
    if not spans:
        st.info("No evaluation tables for these models: run `make evaluate` to match a budget.")
        return None
    # whole MFLOPs that take in every point: the cheapest setting fits at the slider's minimum
    lo, hi = float(math.ceil(min(s[0] for s in spans))), float(math.ceil(max(s[1] for s in spans)))
    # the user's budget, kept while it fits: the slider is a new widget whenever its range changes
    # (another model chosen, a visit to another page), and would start again from the middle
    # (COMPARE_BUDGET_VALUE follows every move of the slider, through its callback, before the run)
    budget = float(min(max(st.session_state.get(state.COMPARE_BUDGET_VALUE, round((lo + hi) / 2)), lo), hi))
    st.session_state[state.COMPARE_BUDGET] = budget
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.slider(
        "Budget: mean MFLOPs per test image", lo, hi, budget, step=1.0, format="%d", key=state.COMPARE_BUDGET,
        on_change=lambda: st.session_state.update({state.COMPARE_BUDGET_VALUE: st.session_state[state.COMPARE_BUDGET]}),
        help="Each configuration's swept knob is set from its eval table so that its mean compute on the "
        "CIFAR-10 test set is the closest to this budget without exceeding it.",
    )  # fmt: skip
    right.button("Match this budget", on_click=match_budget, args=(chosen,), type="primary")
    st.caption("The dashed line on the accuracy chart below marks this budget; the button sets each "
               "configuration's swept knob under it.")  # fmt: skip
    return st.session_state[state.COMPARE_BUDGET]


def render_config_controls(i: int) -> tuple[str, dict[str, Any]]:
    """Configuration ``i``'s model and knobs."""
    names, key = available(), state.compare_key(i, "model")
    name = st.selectbox(
        "Model", names, index=current_index(key, names, names[i % len(names)]), key=key,
        format_func=lambda n: model_class(n).title,
    )  # fmt: skip
    model = load_model(name)
    defaults = current_knobs(i, model)
    knobs = render_knobs(model.knobs, defaults, key_of=lambda key: knob_key(i, name, key))
    matched = st.session_state.get(state.COMPARE_MATCHED, {}).get(i)
    budget = st.session_state.get(state.COMPARE_BUDGET_VALUE)
    if matched and matched[:3] == (name, knobs, budget):  # still as the budget set it, at the budget shown
        st.caption(matched[3])
    return name, knobs


def run_config(i: int, name: str, knobs: dict[str, Any], picked: InputImage) -> Config:
    """The real batch-1 trace of one configuration, its latency and its test-set point."""
    model = load_model(name)
    x = model_input(name, picked.key, picked.image)
    trace, timing = path_latency(name, picked.key, tuple(sorted(knobs.items())), x, knobs)
    table = table_of(name)
    curve = model.curve_of(table, trace.knobs) if table else None
    point = model.measured_point(table, trace.knobs) if curve else None
    return Config(i, name, trace, timing, curve, point)


def config_lines(config: Config, classes: tuple[str, ...]) -> list[str]:
    """The numbers of one configuration, as the column and the PNG both show them."""
    t = config.trace
    lines = [
        f"says {classes[t.prediction]} ({100 * t.confidence:.1f}%)",
        f"{t.mflops:.1f} MFLOPs ({100 * t.fraction:.0f}% of full), {config.timing.ms:.1f} ms ({config.latency_ratio})",
        decision_of(t).text,
    ]
    if config.point is None:
        lines.append("test set: not measured at these knobs")
    else:
        p = config.point
        lines.append(
            f"test set: {100 * p['accuracy']:.2f}% at {p['mflops']:.1f} mean MFLOPs ({config.curve.knob} {p['value']:g})"
        )
    return lines


def knob_text(trace: Trace) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in trace.knobs.items())


def render_config(config: Config, picked: InputImage) -> None:
    """One column: the configuration's numbers (metrics stacked: the columns are narrow)."""
    classes = load_model(config.name).card.classes
    t = config.trace
    verdict = ""
    if picked.label is not None:
        verdict = " (right)" if t.prediction == picked.label else " (wrong)"
    st.metric("Prediction", f"{classes[t.prediction]}{verdict}", f"{100 * t.confidence:.1f}% probability",
              delta_color="off", delta_arrow="off")  # fmt: skip
    st.metric(
        "Compute", f"{t.mflops:.1f} MFLOPs", f"{100 * t.fraction:.0f}% of full", delta_color="off", delta_arrow="off"
    )
    st.metric("Latency", f"{config.timing.ms:.1f} ms", config.latency_ratio, delta_color="off", delta_arrow="off",
              help=f"Batch 1, fastest of {LATENCY_REPEATS} runs, measured in turn with the model's full network on this "
              f"image. Rough: the repeated runs varied more than {NOISY_SPREAD}x, as when other work shares the cores.")  # fmt: skip
    st.caption(" · ".join(config_lines(config, classes)[2:]))


def render_pictures(configs: list[Config], image: Image.Image) -> list[Image.Image]:
    """Each configuration's own picture, full width (charts) or side by side (maps over the
    image). Returns one image per configuration for the PNG: its map, or the input itself."""
    st.subheader("What each configuration computed")
    pictures = {c.index: mechanism_picture(c.trace, image, load_model(c.name).card.classes) for c in configs}
    maps = [c for c in configs if isinstance(pictures[c.index], Image.Image)]
    for c in configs:
        if c not in maps:
            st.markdown(f"**{c.label}**: {knob_text(c.trace)}")
            st.plotly_chart(pictures[c.index], key=f"cmp_picture{c.index}")
    if maps:
        for col, c in zip(st.columns(len(configs)), maps, strict=False):
            col.image(pictures[c.index], caption=f"{c.label}: {decision_of(c.trace).text}", width=MAP_SIDE)
    return [p if isinstance(p, Image.Image) else image for p in pictures.values()]


def render_curves(configs: list[Config], budget: float | None) -> None:
    """Every model's curve at its default knobs, the curves the configurations lie on, the
    configurations' measured points and the budget."""
    curves: dict[str, dict[str, Any]] = {}
    current: dict[str, tuple[float, float]] = {}
    for name in available():
        table = table_of(name)
        if table is None:
            continue
        model = load_model(name)
        defaults = {k.key: model.default_knob(k) for k in model.knobs}
        mine = [c.curve for c in configs if c.name == name and c.curve is not None]
        for curve in [model.curve_of(table, defaults), *mine]:
            if curve is not None:
                label = f"{short_title(name)}: {curve.label}" if curve.label else short_title(name)
                curves[label] = {"points": curve.points, "value_label": curve.knob}  # one line per curve
    for c in configs:
        if c.point is not None:
            current[c.label] = (c.point["mflops"], c.point["accuracy"])
    st.subheader("Accuracy vs compute on the CIFAR-10 test set")
    st.plotly_chart(make_accuracy_curve(curves, current=current, label_current=True, budget=budget), key="cmp_curves")
    st.caption(
        "Lines: each model's eval table (`assets/eval/`, `python -m models.evaluate --write`), at its default "
        "settings and at the settings of each configuration, a dot per setting measured, dotted where no setting "
        "lands between two far apart. Stars: the configurations' measured points."
    )


def export_json(configs: list[Config], picked: InputImage) -> str:
    return comparison_json(
        picked.name,
        [
            {"model": c.name, "latency_ms": c.timing.ms, "full_latency_ms": c.timing.full_ms,
             "latency_spread": c.timing.spread, "test_point": c.point,
             "test_point_knob": c.curve.knob if c.point is not None else None, "trace": c.trace}
            for c in configs
        ],
    )  # fmt: skip


def render_exports(configs: list[Config], pictures: list[Image.Image], picked: InputImage) -> None:
    panels = []
    for c, picture in zip(configs, pictures, strict=True):
        classes = load_model(c.name).card.classes
        panels.append(Panel(f"{c.label}\n{knob_text(c.trace)}", tuple(config_lines(c, classes)), picture, c.trace))
    left, right = st.columns(2)
    # drawn when clicked (the PNG takes about a second), and a click does not rerun the page
    left.download_button("Download the comparison (PNG)", lambda: make_comparison_png(panels), "dynn-comparison.png",
                         mime="image/png", icon=":material/image:", on_click="ignore")  # fmt: skip
    right.download_button("Download the traces (JSON)", lambda: export_json(configs, picked), "dynn-traces.json",
                          mime="application/json", icon=":material/data_object:", on_click="ignore")  # fmt: skip


def render_compare() -> None:
    picked = render_page_header(
        "Compare strategies",
        "Two to four configurations (a model and its knobs) on the same image, side by side; match them to one "
        "compute budget to compare accuracy at equal cost.",
    )
    if picked is None:
        return
    default = current_value(state.COMPARE_COUNT, COUNTS[0])
    # required: in the browser, a click on the chosen option would otherwise leave none chosen
    count = (
        st.segmented_control("Configurations", COUNTS, default=default, key=state.COMPARE_COUNT, required=True)
        or COUNTS[0]
    )
    names = available()
    with st.container(border=True):
        st.markdown("**Match a budget**")
        budget = render_budget(
            [st.session_state.get(state.compare_key(i, "model"), names[i % len(names)]) for i in range(count)]
        )
    columns = st.columns(count, gap="medium", border=True)
    chosen = []
    for i, col in enumerate(columns):
        with col:
            chosen.append(render_config_controls(i))
    configs = []
    for i, (col, (name, knobs)) in enumerate(zip(columns, chosen, strict=True)):
        configs.append(run_config(i, name, knobs, picked))
        with col:
            render_config(configs[-1], picked)
    pictures = render_pictures(configs, thumbnail(picked.key, MAP_SIDE, picked.image))
    render_curves(configs, budget)
    render_exports(configs, pictures, picked)


render_compare()
