"""What the pages print: latency (the fastest runs, a caveat when they disagreed) and small tables."""

from __future__ import annotations

import pytest

from components.render import NOISY_SPREAD, Timing


def test_a_timing_gives_its_ratio_and_flags_runs_that_disagreed():
    calm = Timing(2.0, 4.0, 1.1)
    assert calm.ratio == pytest.approx(0.5) and not calm.noisy and calm.caveat() is None
    busy = Timing(2.0, 4.0, 3.2)
    assert busy.noisy and "3.20x" in busy.caveat()
    assert not Timing(1.0, 1.0, NOISY_SPREAD).noisy
    # just past the threshold, the caveat must not round the spread back down to it
    assert "1.52x" in Timing(1.0, 1.0, 1.52).caveat()


def test_a_small_tables_cells_are_shown_as_text():
    """render_small_table's cells: Markdown and Streamlit's LaTeX must not read them, a ``|``
    must not split the cell, a line break must not end the row; other text stays as it is."""
    from components.render import markdown_text

    assert markdown_text("a|b *c* $x$ [l](u) <b>\nnext") == r"a\|b \*c\* \$x\$ \[l\](u) \<b\> next"
    assert markdown_text("exit 6 (fired)") == "exit 6 (fired)"
    assert markdown_text("airplane\u00a099%") == "airplane\u00a099%"  # the no-break space is kept


def test_a_small_cost_in_a_table_does_not_read_as_zero():
    from components.render import mflops_cell

    assert mflops_cell(37_748_736) == "37.75"
    assert mflops_cell(0) == "0.00"  # a skipped block
    assert mflops_cell(2_570) == "0.0026"  # the transformer's head: 128 x 10 multiply-adds and a norm
    assert mflops_cell(10_000) == "0.01"


def test_a_latency_that_did_not_fall_with_the_flops_is_explained_once():
    from components.render import slower_than_flops_note

    assert slower_than_flops_note(0.47, Timing(13.3, 13.2, 1.1)).startswith("47% of the FLOPs in 1.01x the time")
    assert slower_than_flops_note(0.50, Timing(3.9, 7.9, 1.1)) is None  # early exits: time fell with the FLOPs
    assert slower_than_flops_note(0.84, Timing(10.0, 10.0, 1.1)) is None  # within the margin
    assert slower_than_flops_note(0.47, Timing(13.3, 13.2, 2.0)) is None  # rough: the caveat says so instead


def choice_knob_page() -> None:
    """A page with one choice knob whose default the card overrides (AppTest runs this alone)."""
    from components.render import render_knobs
    from models.core import Knob

    knob = Knob("mode", "Mode", 0, 0, 0, "a", "Which mode.", options=("a", "b"))
    render_knobs((knob,), {"mode": "b"}, key_of=lambda key: f"knob:test:{key}")


def test_a_choice_knob_starts_at_the_cards_default_not_the_knobs_own():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(choice_knob_page).run()
    assert not at.exception
    assert at.selectbox[0].value == "b"
