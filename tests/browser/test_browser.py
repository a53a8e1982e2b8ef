"""End to end in Chromium (Playwright driving Debian's /usr/bin/chromium) against
``streamlit run``: on the early-exit and block-skipping pages, upload a photo, move the
threshold, see the compute figure change. Widgets are found by ``data-testid`` and the test waits on the page's
state, never on a fixed sleep."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support import ROOT, chromium_browser, metric_value, serve_app, threshold_slider, wait_idle

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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{path}.png"), full_page=True)
    page.close()
