"""The few functions that place components on a Streamlit page (``render_*``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

from components.figures import mflops_text
from models.core import Knob, Trace


def render_knobs(
    knobs: tuple[Knob, ...], defaults: dict[str, Any], *, key_of: Callable[[str], str], disabled: bool = False
) -> dict[str, Any]:
    """One widget per knob, built from the knob (never hard-coded ranges); ``key_of`` names
    each widget's session-state key."""
    values: dict[str, Any] = {}
    for knob in knobs:
        key = key_of(knob.key)
        # the widget's default is its current value: the one kept between pages or set by a
        # matched budget. Not None: a select box without a default gets a clear button, and a
        # cleared knob is no knob value at all.
        current = current_value(key, defaults.get(knob.key, knob.default))
        if knob.options:
            names = dict(zip(knob.options, knob.option_labels or knob.options, strict=True))
            index = current_index(key, knob.options, defaults.get(knob.key, knob.default))
            values[knob.key] = st.selectbox(
                knob.label, knob.options, index=index, key=key, help=knob.help, format_func=names.__getitem__,
                disabled=disabled,
            )  # fmt: skip
        else:
            values[knob.key] = st.slider(
                knob.label, float(knob.lo), float(knob.hi), float(current), step=float(knob.step), key=key,
                help=knob.help, disabled=disabled, format="%d" if knob.counts else None,
            )  # fmt: skip
    return values


def current_index(key: str, options: Sequence[Any], default: Any) -> int:
    """The index of a choice widget's current value (:func:`current_value`) among ``options``;
    ``default``'s where the kept value is no longer one of them."""
    value = current_value(key, default)
    return options.index(value if value in options else default)


def current_value(key: str, default: Any) -> Any:
    """A widget's value as session state holds it (kept between pages, or set by the page), else
    ``default``: what the widget is drawn with, so that a select box is never drawn without a
    choice. Streamlit's warning about a widget given both a default and a session-state value is
    off in ``.streamlit/config.toml``: here the two are the same value."""
    value = st.session_state.get(key)
    return default if value is None else value


LATENCY_REPEATS = 3  # pairs of runs (the path, then the static network): the cost of 6 runs per new path
NOISY_SPREAD = 1.5  # repeated runs further apart than this (slowest / fastest): the latency is flagged as rough


@dataclass(frozen=True)
class Timing:
    """Measured batch-1 latency of a run and of the static network on the same input, each the
    fastest of the repeated runs (ms), and ``spread``: the larger of the two slowest-to-fastest
    ratios. On an idle machine repeated runs agree within a few percent; a large spread means
    other work shared the cores, and the fastest run is only an upper bound of the model's own
    time."""

    ms: float
    full_ms: float
    spread: float = 1.0

    @property
    def ratio(self) -> float:
        return self.ms / self.full_ms

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD

    def caveat(self) -> str | None:
        """A sentence for the user when the runs disagreed, else None."""
        if not self.noisy:
            return None
        return (
            f"Latency is rough: its repeated runs varied up to {self.spread:.2f}x, so other work was sharing "
            "this machine's cores while it was measured."
        )


SLOWER_THAN_FLOPS = 0.25  # a latency ratio this far above the FLOPs fraction gets a word of explanation


def slower_than_flops_note(fraction: float, timing: Timing) -> str | None:
    """Why the time did not fall with the FLOPs, when it clearly did not (and the runs agreed:
    a rough latency has its own caveat)."""
    if timing.noisy or timing.ratio - fraction <= SLOWER_THAN_FLOPS:
        return None
    return (
        f"{100 * fraction:.0f}% of the FLOPs in {timing.ratio:.2f}x the time: at batch size 1 on a CPU, much of a "
        "small network's time is a fixed cost per operation, which skipping arithmetic does not remove, and the "
        "dynamic path adds operations of its own (gathering and scattering positions, sorting tokens, routing). "
        "FLOPs count the arithmetic; the latency is what this machine did."
    )


def render_small_table(rows: Sequence[dict[str, Any]]) -> None:
    """A handful of short rows as a Markdown table, shown as plain text. ``st.dataframe`` brings
    pandas and Arrow into the first run (0.3-0.7 s of imports, on the early-exit page's cold
    start) and a data grid for the browser to mount, and builds a DataFrame on every rerun; a
    table of a few rows needs none of it."""
    if not rows:
        return
    head = list(rows[0])
    cells = [[markdown_text(h) for h in head], ["---"] * len(head)]
    cells += [[markdown_text(row[h]) for h in head] for row in rows]
    st.markdown("\n".join("| " + " | ".join(line) + " |" for line in cells))


def mflops_cell(flops: float) -> str:
    """FLOPs as MFLOPs for a table cell: two decimals, and two significant digits below 0.01 so
    that a small cost that is not zero (a classifier head, a token fusion) does not read as 0."""
    return mflops_text(flops, 2, 0.01)


def markdown_text(value: Any) -> str:
    """``value`` as literal text in one Markdown table cell: the characters Markdown would read
    as emphasis, code, links, HTML, a cell border or (in Streamlit) LaTeX are escaped, and line
    breaks become spaces."""
    return re.sub(r"([\\`*_\[\]<>|$~])", r"\\\1", re.sub(r"[\r\n]+", " ", str(value)))


def render_cost_metrics(trace: Trace, *, timing: Timing | None) -> None:
    """MFLOPs used (and % of the static network) and measured batch-1 latency."""
    a, b = st.columns(2)
    a.metric(
        "Compute", f"{trace.mflops:.1f} MFLOPs", f"{100 * trace.fraction:.0f}% of full ({trace.full_mflops:.0f})",
        delta_color="off", delta_arrow="off", help="Executed FLOPs for this input: the sum over the units that ran "
        "(each counted with torch's FlopCounterMode at its shapes; the tests check the sum against FlopCounterMode on "
        "the real run). One multiply-add = 2 FLOPs. Includes what deciding costs (exit classifiers, gates, routers).",
    )  # fmt: skip
    if timing is not None:
        ratio = f"{timing.ratio:.2f}x the full network ({timing.full_ms:.1f} ms)"
        b.metric("Latency", f"{timing.ms:.1f} ms", ratio, delta_color="off", delta_arrow="off",
                 help=f"Wall time of the real batch-1 dynamic forward pass on this machine's CPU, fastest of "
                 f"{LATENCY_REPEATS} runs, each followed by a run of the full network for the ratio (one measurement "
                 "when this setting runs the full network).")  # fmt: skip
        note = timing.caveat() or slower_than_flops_note(trace.fraction, timing)
        if note:
            st.caption(note)
