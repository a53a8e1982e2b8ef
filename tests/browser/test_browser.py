"""End to end in Chromium (Playwright driving Debian's /usr/bin/chromium) against the app
started as ``make run`` starts it (``python -m app``): on the early-exit and block-skipping pages, upload a photo, move the
threshold, see the compute figure change. Widgets are found by ``data-testid`` and the test waits on the page's
state, never on a fixed sleep."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from models.early_exit import EarlyExitResNet
from tests.bench.session import element_type, find_slider, headless_session
from tests.support import ROOT, chromium_browser, make_video, metric_value, serve_app, threshold_slider, wait_idle

pytestmark = pytest.mark.browser
ARTIFACTS = Path(os.environ.get("DYNN_ARTIFACTS", ROOT / "artifacts"))


@pytest.fixture(scope="module")
def app_url():
    with serve_app() as url:
        yield url


@pytest.fixture(scope="module")
def browser(chromium):
    with chromium_browser() as b:
        yield b


def wait_for_metric_change(page, label: str, before: str) -> str:
    page.wait_for_function(
        "([label, before]) => [...document.querySelectorAll('[data-testid=\"stMetric\"]')]"
        ".some(m => m.innerText.includes(label) && !m.innerText.includes(before))",
        arg=[label, before],
        timeout=60_000,
    )
    wait_idle(page)
    return metric_value(page, label)


@pytest.mark.parametrize(
    ("path", "slider"),
    [
        ("early_exits", "Confidence threshold"),
        ("block_skip", "Gate threshold"),
        ("tokens", "Keep ratio (prune)"),
        ("experts", "Experts per token (k)"),
        ("pixels", "Mask threshold"),
    ],
)
def test_upload_move_threshold_see_compute_change(app_url, browser, photos, path, slider):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{app_url}/{path}")
    wait_idle(page)
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photos[0]))
    page.get_by_text(photos[0].name).first.wait_for(timeout=60_000)
    wait_idle(page)
    page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=60_000)
    before = metric_value(page, "Compute")

    threshold_slider(page, slider).focus()
    # to the end of the range: the static network for early exits, the strictest gates for
    # block skipping, every token kept, every expert per token; each costs differently from
    # the default setting
    page.keyboard.press("End")
    after = wait_for_metric_change(page, "Compute", before)
    assert after != before and re.fullmatch(r"[\d.]+ MFLOPs", after)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert_no_chart_drawn_twice(page)
    if path in ("early_exits", "block_skip"):
        assert_panel_tables_drawn(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{path}.png"), full_page=True)
    page.close()


def test_a_page_keeps_its_knobs_while_another_page_reruns_its_fragment(app_url, browser):
    """Streamlit drops the values of widgets a run does not draw, fragment reruns included.
    Each step waits for what it changed to be drawn, so no run is cut short by the next."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{app_url}/early_exits")
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    wait_idle(page)
    moved = f"{EarlyExitResNet().card.meta['default_knobs']['threshold'] + 0.05:.2f}"  # five steps of 0.01
    threshold_slider(page).focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    threshold_text(page, f"threshold {moved}")
    page.get_by_role("link", name="Tokens", exact=True).click()
    page.get_by_role("heading", name="Tokens", exact=True).wait_for(timeout=60_000)
    keep = threshold_slider(page, "Keep ratio (prune)")
    keep.wait_for(timeout=60_000)
    wait_idle(page)
    before = metric_value(page, "Compute")
    keep.focus()
    page.keyboard.press("ArrowLeft")  # a fragment rerun: the early-exit knobs are not drawn
    wait_for_metric_change(page, "Compute", before)
    page.get_by_role("link", name="Early exits", exact=True).click()
    page.get_by_role("heading", name="Early exits", exact=True).wait_for(timeout=60_000)
    threshold_text(page, f"threshold {moved}")  # not the default
    assert threshold_slider(page).input_value() == moved
    page.close()


MARGINS_GROWN_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(g => {
    const m = g.layout.margin, s = g._fullLayout._size;
    return [g.layout.height, [m.l, m.r, m.t, m.b], [s.l, s.r, s.t, s.b].map(Math.round)];
}).filter(([, given, drawn]) => given.some((v, i) => v !== drawn[i]))"""


def assert_panel_tables_drawn(page) -> None:
    """``st.html`` sanitises its markup: the test-set panel's bars must keep their widths and
    tooltips, and every grid cell its shade and tooltip."""
    bars, grid = page.locator('[data-testid="stHtml"]').all()
    rows = bars.locator("tr").count()
    assert rows > 1 and bars.locator("tr[title]").count() == rows
    assert bars.locator("div[style*='width:']").count() == rows
    cells = grid.locator("td").count()
    assert cells >= 20 and grid.locator("td[title][style*='background']").count() == cells


def assert_no_chart_drawn_twice(page) -> None:
    """No chart's labels needed more room than its layout's margin (Plotly would then grow the
    margin and draw the chart a second time: components.figures.shared_layout). Waits until
    every chart on the page has been drawn, so that none is left out; a failure lists (height,
    margin given, margin drawn) of each."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].every(g => g._fullLayout)", timeout=60_000
    )
    twice = page.evaluate(MARGINS_GROWN_JS)
    assert twice == [], f"charts whose labels needed more margin than they were given: {twice}"


def test_the_fallback_picture_of_a_model_fits_its_labels(browser):
    """A model with no picture of its own gets a unit-by-unit FLOPs chart (components.pictures);
    none of the four needs it, so no page draws it: drawn here with plotly.js for each model's
    units, as wide as a page and as narrow as one of four Compare columns, it must not need more
    margin than it gives."""
    import plotly
    import torch

    import models
    from components.pictures import make_unit_flops

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_content("<html><body></body></html>")
    page.add_script_tag(path=str(Path(plotly.__file__).parent / "package_data" / "plotly.min.js"))
    for name in models.available():
        model = models.get(name)
        fig = make_unit_flops(model.trace(torch.rand(1, 3, model.input_size, model.input_size))).to_plotly_json()
        for width in (280, 900):  # one of four Compare columns; the page's width
            page.evaluate(
                """async ([fig, width]) => { const d = document.createElement('div'); d.style.width = width + 'px';
                document.body.appendChild(d); await Plotly.newPlot(d, fig.data, fig.layout); }""",
                [fig, width],
            )
    assert page.evaluate(MARGINS_GROWN_JS) == []
    page.close()


def threshold_text(page, text: str) -> None:
    """Wait until a plotly chart shows ``text`` (the confidence chart's threshold label)."""
    page.wait_for_function(
        "(t) => [...document.querySelectorAll('.js-plotly-plot text')].some(e => e.textContent === t)",
        arg=text, timeout=60_000,
    )  # fmt: skip
    wait_idle(page)


def test_compare_match_a_budget_and_export(app_url, browser):
    from playwright.sync_api import expect  # retries until the page shows it (the columns fill in turn)

    page = browser.new_page(viewport={"width": 1500, "height": 2200})
    page.goto(f"{app_url}/compare")
    wait_idle(page)
    computes = page.locator('[data-testid="stMetric"]').filter(has_text="Compute")
    expect(computes).to_have_count(2, timeout=60_000)
    page.get_by_role("button", name="Match this budget").click()
    expect(page.get_by_text("Matched to the budget")).to_have_count(2, timeout=60_000)
    wait_idle(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the comparison (PNG)").click()
    assert download.value.suggested_filename == "dynn-comparison.png"
    assert page.locator('[data-testid="stException"]').count() == 0
    assert_no_chart_drawn_twice(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
    page.close()


def choose_video_model(page, title: str, knob: str) -> None:
    """Choose the Video page's model and wait for its run: its own knob ``knob`` is drawn."""
    page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("Model", exact=True)).click()
    page.get_by_role("option", name=title, exact=True).click()
    threshold_slider(page, knob).wait_for(timeout=60_000)
    wait_idle(page)


def scrub_to_last_frame(page, caption: str) -> None:
    page.locator('[data-testid="stSlider"]').filter(has=page.get_by_text("Frame", exact=True)).get_by_role(
        "slider"
    ).focus()
    page.keyboard.press("End")
    page.get_by_text(caption).wait_for(timeout=60_000)
    wait_idle(page)


def test_video_upload_shows_timelines_and_the_scrubbed_frame(app_url, browser, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_video(seconds=3.0, fps=10, size=(160, 96), still_from=1.5))
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.goto(f"{app_url}/video")
    wait_idle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(clip))
    page.locator('[data-testid="stMetric"]').filter(has_text="Frames sampled").wait_for(timeout=60_000)
    wait_idle(page)
    assert metric_value(page, "Frames sampled") == "6" and metric_value(page, "Model runs") == "6"
    # a knob of one model, set and then out of sight while another model is chosen, must
    # outlive a scrub (the scrubber's fragment rerun does not draw it, and its keep_settings
    # must not skip it)
    threshold_slider(page).focus()
    page.keyboard.press("ArrowLeft")
    moved = f"{EarlyExitResNet().card.meta['default_knobs']['threshold'] - 0.01:.2f}"
    page.get_by_text(moved, exact=True).first.wait_for(timeout=60_000)
    wait_idle(page)
    choose_video_model(page, "Block skipping (gated ResNet)", "Gate threshold")
    scrub_to_last_frame(page, "frame at 2.50 s")
    choose_video_model(page, "Early exits (multi-exit ResNet)", "Confidence threshold")
    assert threshold_slider(page).input_value() == moved
    threshold_slider(page, "Frames per second to sample").focus()
    page.keyboard.press("End")  # 10 per second: every frame of the clip
    page.locator('[data-testid="stMetric"]').filter(has_text="Frames sampled").get_by_text("30", exact=True).wait_for(
        timeout=60_000
    )
    wait_idle(page)
    # scrubbing reruns only the scrubber's fragment; the settings above it must outlive that
    scrub_to_last_frame(page, "frame at 2.90 s")
    threshold_slider(page, "Reuse below this change").focus()
    page.keyboard.press("End")
    runs = wait_for_metric_change(page, "Model runs", "30")
    assert int(runs) < 30 and metric_value(page, "Frames sampled") == "30"
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)  # the timelines, redrawn
    assert page.locator('[data-testid="stException"]').count() == 0
    assert_no_chart_drawn_twice(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "video.png"), full_page=True)
    page.close()


def test_the_benchmarks_headless_session_reruns_only_the_knob_fragment(app_url):
    """``make bench`` times the server's knob changes with a headless websocket session
    (tests/bench/session.py): it must go on speaking the protocol this Streamlit speaks, and
    what it times must be the fragment's rerun with the new value, not a whole run."""
    with headless_session(app_url) as session:
        slider = find_slider(session.open("early_exits"), "Confidence threshold")
        assert slider[1]  # the slider sits in a fragment
        _, answer = session.move_slider(slider, 0.5)
    deltas = [m for m in answer if m.WhichOneof("type") == "delta"]
    assert deltas and {m.delta.fragment_id for m in deltas} == {slider[1]}
    specs = [m.delta.new_element.plotly_chart.spec for m in deltas if element_type(m) == "plotly_chart"]
    assert any("threshold 0.50" in spec for spec in specs)
