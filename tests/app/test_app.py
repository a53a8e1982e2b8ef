"""The app through ``streamlit.testing.v1.AppTest``: every page renders, knobs move the numbers,
uploads (real photos and bad files) are handled."""

from __future__ import annotations

import json
import os
import re
import threading

import pytest
import torch
from streamlit.testing.v1 import AppTest

import models
from app import state
from app.inputs import EXAMPLE, TEST, UPLOAD
from tests.conftest import ROOT
from tests.support import make_video

MAIN = str(ROOT / "app" / "main.py")
EARLY_EXITS = "views/early_exits.py"
BLOCK_SKIP = "views/block_skip.py"
TOKENS = "views/tokens.py"
EXPERTS = "views/experts.py"
PIXELS = "views/pixels.py"
COMPARE = "views/compare.py"
VIDEO = "views/video.py"


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120).run()
    assert not at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def slider(at: AppTest, label: str):
    return next(s for s in at.slider if s.label == label)


def test_overview_lists_the_taxonomy_and_models():
    at = open_page()
    assert at.title[0].value == "DyNN Explorer"
    assert {"Output-adaptive", "Computation-graph-adaptive", "Input-adaptive"} <= {s.value for s in at.subheader}


def test_the_app_leaves_half_the_cores_to_the_browser():
    """Streamlit runs each script run in a thread of its own: the setting must hold there."""
    from app.models_cache import INFERENCE_THREADS, use_inference_threads

    seen = []
    run = threading.Thread(target=lambda: (use_inference_threads(), seen.append(torch.get_num_threads())))
    run.start()
    run.join()
    assert seen == [INFERENCE_THREADS]
    cores = os.cpu_count() or 1
    assert 1 <= INFERENCE_THREADS <= max(1, cores // 2)  # at least one; the other half of the cores: the browser's


def test_early_exits_page_renders_for_the_default_example():
    at = open_page(EARLY_EXITS)
    assert metric(at, "Prediction")
    assert " of " in metric(at, "Exit")
    assert metric(at, "Compute").endswith("MFLOPs")
    assert metric(at, "Latency").endswith("ms")
    assert not at.error
    seen = next(i.caption for image in at.get("image") for i in image.proto.imgs if i.caption.startswith("What the"))
    assert seen == "What the model sees (32x32, the centre square of the image, enlarged)"  # the cat is 451x300
    scopes = [m.label.split(":")[0] for m in at.metric if "last wrong" in m.label or "last right" in m.label]
    assert scopes == ["At this threshold", "At this threshold", "At any threshold"]  # overthinking, said which


def test_the_test_set_panel_needs_a_table_measured_on_the_loaded_weights_file(monkeypatch):
    """The app hashes the weights file its model was loaded from, not the card's record of it:
    a file whose bytes differ from the eval table's gets a warning instead of the panel."""
    from app import models_cache

    hashed, real = [], models_cache.sha256

    def file_sha256(path):
        hashed.append(path.name)
        return "0" * 64 if path.name == "early_exit.safetensors" else real(path)

    monkeypatch.setattr(models_cache, "sha256", file_sha256)
    models_cache.loaded_weights_sha256.clear()
    try:
        at = open_page(EARLY_EXITS)
        assert "early_exit.safetensors" in hashed
        assert any("No evaluation table for these weights" in w.value for w in at.warning)
        assert not any("test set" in s.value for s in at.subheader)
    finally:
        models_cache.loaded_weights_sha256.clear()
    monkeypatch.undo()
    assert "test set" in " ".join(s.value for s in open_page(EARLY_EXITS).subheader)  # the real file: the panel


def markdown_table(at: AppTest, header: str) -> list[list[str]]:
    """The cells of the Markdown table (``render_small_table``) whose header row is ``header``."""
    table = next(m.value for m in at.markdown if m.value.startswith(header))
    return [line.strip("| ").split(" | ") for line in table.splitlines()[2:]]


def test_the_top_classes_table_has_a_row_per_exit_and_marks_the_one_that_fired():
    at = open_page(EARLY_EXITS)
    rows = markdown_table(at, "| exit | top 1 | top 2 | top 3 |")
    fired, exits = (int(n) for n in metric(at, "Exit").split(" of "))
    assert len(rows) == exits
    assert [row[0] for row in rows if row[0].endswith("(fired)")] == [f"exit {fired} (fired)"]
    assert rows[fired - 1][1].rsplit("\u00a0", 1)[0] == metric(at, "Prediction")  # the fired exit's top class


def test_moving_the_threshold_changes_the_compute_figure():
    at = open_page(EARLY_EXITS)
    slider(at, "Confidence threshold").set_value(0.0).run()
    cheap = metric(at, "Compute")
    assert metric(at, "Exit").startswith("1 of")
    slider(at, "Confidence threshold").set_value(1.0).run()
    full = metric(at, "Compute")
    assert cheap != full
    assert float(cheap.split()[0]) < float(full.split()[0])
    assert metric(at, "Exit").split()[0] == metric(at, "Exit").split()[-1]  # the last exit


def panel_tables(at: AppTest) -> tuple[list[str], list[list[str]]]:
    """The test-set panel's exit shares (a percentage per exit) and class grid (a row of
    percentages per class), read from the two ``st.html`` tables."""
    bars, grid = (h.proto.body for h in at.get("html"))
    shares = re.findall(r">(\d+)%</td>", bars)
    rows = [re.findall(r">(\d+)</td>", row) for row in re.findall(r"<tr><th[^>]*>[^<]+</th>(.*?)</tr>", grid)]
    return shares, rows


def test_the_exit_shares_and_class_grid_follow_the_threshold():
    """Threshold 0: every test image leaves at the first exit; 1: at the last. In between, the
    shares are the eval table's at that threshold."""
    at = open_page(EARLY_EXITS)
    slider(at, "Confidence threshold").set_value(0.0).run()
    shares, rows = panel_tables(at)
    exits = len(shares)
    assert shares == ["100"] + ["0"] * (exits - 1)
    assert len(rows) == 10 and all(row == ["100"] + ["0"] * (exits - 1) for row in rows)
    slider(at, "Confidence threshold").set_value(1.0).run()
    shares, rows = panel_tables(at)
    assert shares == ["0"] * (exits - 1) + ["100"] and all(row == ["0"] * (exits - 1) + ["100"] for row in rows)
    slider(at, "Confidence threshold").set_value(0.5).run()
    table = json.loads((ROOT / "assets" / "eval" / "early_exit.json").read_text())
    point = next(p for p in table["criteria"]["max_prob"] if p["value"] == 0.5)
    shares, rows = panel_tables(at)
    assert shares == [f"{100 * s:.0f}" for s in point["exit_share"]]
    assert rows == [[f"{100 * (c / sum(row)):.0f}" for c in row] for row in point["class_exit_counts"]]


def test_the_static_setting_shows_no_gain_in_test_accuracy():
    """At threshold 1.0 the test-set point is the last exit itself: "0.00 pts", not a green
    "+0.00" that reads as better."""
    at = open_page(EARLY_EXITS)
    slider(at, "Confidence threshold").set_value(1.0).run()
    accuracy = next(m for m in at.metric if m.label.startswith("Test accuracy at"))
    assert accuracy.delta == "0.00 pts vs last exit"
    from streamlit.proto.Metric_pb2 import Metric

    assert (accuracy.proto.color, accuracy.proto.direction) == (Metric.MetricColor.GRAY, Metric.MetricDirection.NONE)


def test_changing_the_criterion_keeps_the_page_working():
    at = open_page(EARLY_EXITS)
    for option in at.selectbox(key="knob:early_exit:criterion").options:
        at.selectbox(key="knob:early_exit:criterion").set_value(option).run()
        assert not at.exception and metric(at, "Compute")


def upload(at: AppTest, name: str, data: bytes, mime: str) -> AppTest:
    at.sidebar.radio(key="source").set_value(UPLOAD).run()
    at.sidebar.get("file_uploader")[0].set_value((name, data, mime)).run()
    assert not at.exception, at.exception
    return at


def test_uploading_a_real_photo(photos):
    at = open_page(EARLY_EXITS)
    upload(at, photos[0].name, photos[0].read_bytes(), "image/jpeg")
    assert not at.error
    assert metric(at, "Prediction") and metric(at, "Compute")
    assert metric(at, "True label") == "unknown"  # an upload carries no label


def test_an_upload_is_still_there_after_another_source_was_chosen(photos):
    """Streamlit empties the uploader while the sidebar does not draw it: coming back to Upload
    finds the last upload, said so; a new upload replaces it, and removing that leaves none."""
    at = open_page(EARLY_EXITS)
    first, second = photos[0], photos[1]
    upload(at, first.name, first.read_bytes(), "image/jpeg")
    uploaded = at.session_state["input"].key
    at.sidebar.radio(key="source").set_value(EXAMPLE).run()
    assert at.session_state["input"].key != uploaded
    at.sidebar.radio(key="source").set_value(UPLOAD).run()
    assert (at.session_state["input"].key, at.session_state["input"].name) == (uploaded, first.name)
    assert any(c.value.startswith(f"Still using **{first.name}**") for c in at.sidebar.caption)
    slider(at, "Confidence threshold").set_value(0.9).run()  # a rerun keeps it
    assert at.session_state["input"].key == uploaded and not at.exception
    at.sidebar.get("file_uploader")[0].set_value((second.name, second.read_bytes(), "image/jpeg")).run()
    assert at.session_state["input"].name == second.name
    assert not any(c.value.startswith("Still using") for c in at.sidebar.caption)
    at.sidebar.get("file_uploader")[0].set_value(None).run()  # the user removes it
    assert at.session_state["input"] is None and not at.exception


def test_an_upload_that_breaks_the_decoder_is_not_kept(photos, monkeypatch):
    """A decoder failure other than a refused image (here a MemoryError) shows as an exception,
    and that upload is not kept to come back on the next visit to Upload: the good one before
    it is gone too, as a new upload replaces it."""
    at = open_page(EARLY_EXITS)
    upload(at, photos[0].name, photos[0].read_bytes(), "image/jpeg")
    assert at.session_state[state.KEPT_UPLOAD][0] == photos[0].name

    def broken(data: bytes, name: str) -> None:
        raise MemoryError("the decoder ran out of memory")

    monkeypatch.setattr("app.inputs.load_image", broken)
    at.sidebar.get("file_uploader")[0].set_value(("broken.jpg", photos[1].read_bytes() + b"\0", "image/jpeg")).run()
    assert at.exception
    assert state.KEPT_UPLOAD not in at.session_state


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.jpg", b"", "empty"),
        ("notes.png", b"hello, not an image" * 50, "not an image"),
        ("half.jpg", None, "truncated or corrupt"),
    ],
)
def test_bad_upload_shows_a_message_and_the_next_upload_works(photos, name, data, message):
    if data is None:
        whole = photos[0].read_bytes()
        data = whole[: len(whole) // 3]
    at = open_page(EARLY_EXITS)
    upload(at, name, data, "image/jpeg")
    assert any(message in e.value for e in at.sidebar.error), [e.value for e in at.sidebar.error]
    assert any("Choose an image" in i.value for i in at.info)
    upload(at, photos[1].name, photos[1].read_bytes(), "image/jpeg")
    assert not at.sidebar.error and metric(at, "Prediction")


@pytest.mark.dataset
def test_cifar_test_image_picker_shows_the_true_label(cifar_path, monkeypatch):
    monkeypatch.setenv("DYNN_CIFAR10", str(cifar_path))
    at = open_page(EARLY_EXITS)
    at.sidebar.radio(key="source").set_value(TEST).run()
    at.sidebar.number_input(key="test_index").set_value(7).run()
    assert not at.exception
    assert any(c.value.startswith("True label:") for c in at.sidebar.caption)
    assert metric(at, "True label") != "unknown"
    assert "test set" in at.subheader[0].value


def test_early_exits_checks_each_new_path_against_a_real_run(monkeypatch):
    """The page re-decides from the all-exits record, and checks the decision against a real
    batch-1 run the first time a threshold takes a path (that run is the one it times). A real
    run that disagrees (faked here) is reported; a move along the same path runs nothing new."""
    from dataclasses import replace

    from app.common import path_latency
    from models.early_exit import EarlyExitResNet

    path_latency.clear()  # other tests drew this image: their runs are cached
    at = open_page(EARLY_EXITS)
    slider(at, "Confidence threshold").set_value(0.70).run()
    fired = metric(at, "Exit")
    assert not at.warning and fired != "1 of 6"
    honest = EarlyExitResNet.trace
    monkeypatch.setattr(EarlyExitResNet, "trace",
                        lambda self, x, **knobs: replace(t := honest(self, x, **knobs), extras={**t.extras, "fired_exit": 0}))  # fmt: skip
    slider(at, "Confidence threshold").set_value(0.80).run()
    assert metric(at, "Exit") == fired and not at.warning  # the same path as at 0.70: checked then
    slider(at, "Confidence threshold").set_value(1.0).run()  # the static network: a new path
    assert metric(at, "Exit") == "6 of 6"
    assert any("batch-1 run stopped at exit 1, the re-decision at exit 6" in w.value for w in at.warning)


def test_a_latency_measured_on_a_busy_machine_is_flagged_as_rough(monkeypatch):
    """Repeated runs that disagree (faked: every third run four times slower, as when other work
    shares the cores) make the page say the latency is rough, not just show the fastest run."""
    import itertools
    from dataclasses import replace

    from app.common import path_latency
    from models.block_skip import GatedResNet

    path_latency.clear()  # other tests measured this path on this image: their runs are cached
    at = open_page(BLOCK_SKIP)
    honest, times = GatedResNet.trace, itertools.cycle([1.0, 1.0, 4.0])
    monkeypatch.setattr(
        GatedResNet, "trace", lambda self, x, **k: replace(honest(self, x, **k), latency_ms=next(times))
    )
    slider(at, "Gate threshold").set_value(0.0).run()  # every block: another path than the default, measured anew
    assert not at.exception and metric(at, "Latency") == "1.0 ms"
    assert any("varied up to 4.00x" in c.value for c in at.caption), [c.value for c in at.caption]


def test_each_page_keeps_its_settings_while_the_user_visits_others():
    """Streamlit forgets the value of a widget a run does not draw; the app keeps them."""
    at = open_page(EARLY_EXITS)
    slider(at, "Confidence threshold").set_value(0.9).run()
    at.switch_page(BLOCK_SKIP).run()
    slider(at, "Gate threshold").set_value(0.6).run()
    at.switch_page("views/overview.py").run()
    at.switch_page(EARLY_EXITS).run()
    assert slider(at, "Confidence threshold").value == 0.9 and not at.warning
    at.switch_page(BLOCK_SKIP).run()
    assert slider(at, "Gate threshold").value == 0.6 and not at.exception


def test_kept_select_boxes_keep_a_choice_and_no_clear_button():
    """A select box drawn without a default gets a clear button in the browser, and a cleared
    knob stopped the page ("criterion must be one of ..., got None"). Kept and matched values
    are drawn as the widget's default instead."""
    at = open_page(EARLY_EXITS)
    at.switch_page("views/overview.py").run()
    at.switch_page(EARLY_EXITS).run()
    criterion = at.selectbox(key="knob:early_exit:criterion")
    assert criterion.proto.HasField("default") and criterion.value == "max_prob"
    at.switch_page(COMPARE).run()
    at.switch_page(EARLY_EXITS).run()
    at.switch_page(COMPARE).run()
    assert all(at.selectbox(key=f"compare:{i}:model").proto.HasField("default") for i in range(2))
    at.switch_page(VIDEO).run()
    at.switch_page(COMPARE).run()
    at.switch_page(VIDEO).run()
    assert at.radio(key="video:spread").proto.HasField("default") and not at.exception


def test_compare_keeps_its_configurations_while_the_user_visits_others():
    at = open_page(COMPARE)
    at.segmented_control(key="compare:count").set_value(3).run()
    at.selectbox(key="compare:1:model").set_value("pixel_mask").run()
    at.slider(key="compare:1:pixel_mask:threshold").set_value(0.7).run()
    at.switch_page(EARLY_EXITS).run()
    at.switch_page(COMPARE).run()
    assert not at.exception and not at.warning
    assert (
        len(at.selectbox(key="compare:2:model").options) and at.selectbox(key="compare:1:model").value == "pixel_mask"
    )
    assert at.slider(key="compare:1:pixel_mask:threshold").value == 0.7


def test_compare_keeps_the_budget_and_says_matched_only_at_the_budget_shown():
    """The budget slider is a new widget whenever its range changes (another model, another
    page visit) and started again from the middle; the "Matched to the budget" captions stayed
    under a budget that no longer read what they were matched to."""
    at = open_page(COMPARE)
    assert at.segmented_control(key="compare:count").proto.required  # no way to choose no count
    at.slider(key="compare:budget").set_value(150.0).run()
    at.button[0].click().run()
    matched = lambda: [c.value for c in at.caption if c.value.startswith("Matched to the budget")]  # noqa: E731
    assert len(matched()) == 2
    at.selectbox(key="compare:1:model").set_value("vit_tokens").run()
    assert at.slider(key="compare:budget").value == 150.0 and len(matched()) == 1  # the other one still is
    at.switch_page("views/overview.py").run()
    at.switch_page(COMPARE).run()
    assert at.slider(key="compare:budget").value == 150.0 and len(matched()) == 1
    at.slider(key="compare:budget").set_value(160.0).run()
    assert not matched() and not at.exception
    fresh = open_page(COMPARE)  # matched at the budget the slider starts at, never moved
    fresh.button[0].click().run()
    assert len([c for c in fresh.caption if c.value.startswith("Matched to the budget")]) == 2


def test_the_budget_is_marked_on_the_curves_chart_as_the_slider_moves():
    """The slider alone moves no knob (the button does): the chart shows the budget it holds."""

    def budget_line(at: AppTest) -> tuple[float, str]:
        chart = next(c for c in at.get("plotly_chart") if "#1 " in c.proto.spec)
        layout = json.loads(chart.proto.spec)["layout"]
        return layout["shapes"][0]["x0"], layout["annotations"][0]["text"]

    at = open_page(COMPARE)
    start = at.slider(key="compare:budget").value
    assert budget_line(at) == (start, f"budget {start:g}")  # before the slider was ever moved
    at.slider(key="compare:budget").set_value(150.0).run()
    assert budget_line(at) == (150.0, "budget 150")


@pytest.mark.dataset
def test_the_sidebar_keeps_the_test_image_and_example_while_another_source_is_chosen(cifar_path, monkeypatch):
    monkeypatch.setenv("DYNN_CIFAR10", str(cifar_path))
    at = open_page(EARLY_EXITS)
    at.sidebar.selectbox(key="example").set_value(at.sidebar.selectbox(key="example").options[1]).run()
    chosen = at.sidebar.selectbox(key="example").value
    at.sidebar.radio(key="source").set_value(TEST).run()
    at.sidebar.number_input(key="test_index").set_value(42).run()
    at.sidebar.radio(key="source").set_value(EXAMPLE).run()
    assert at.sidebar.selectbox(key="example").value == chosen
    at.sidebar.radio(key="source").set_value(TEST).run()
    assert at.sidebar.number_input(key="test_index").value == 42 and not at.exception


def test_the_attribution_panel_keeps_its_model_and_count_knobs_show_whole_numbers():
    at = open_page(PIXELS)
    at.selectbox(key="attribution:model").set_value("early_exit").run()
    at.switch_page("views/overview.py").run()
    at.switch_page(PIXELS).run()
    assert at.selectbox(key="attribution:model").value == "early_exit" and not at.exception
    at.switch_page(EXPERTS).run()
    k = next(s for s in at.slider if s.key == "knob:vit_tokens:top_k")
    assert k.proto.format == "%d"  # "2", not "2.00"
    assert slider(at, "Capacity factor C").proto.format != "%d"


@pytest.mark.parametrize("kind", ["not a zip", "no test folder"])
def test_an_unusable_dataset_path_gets_a_message_and_no_page_breaks(tmp_path, monkeypatch, kind):
    """``DYNN_CIFAR10`` at the wrong thing (the python tarball, an empty folder): the sidebar
    says so when a test image is picked, and the pages that show test images show captions."""
    bad = tmp_path / "cifar-10-python.tar.gz"
    if kind == "not a zip":
        bad.write_bytes(b"\x1f\x8b" + b"not a zip" * 100)
    else:
        bad.mkdir()
    monkeypatch.setenv("DYNN_CIFAR10", str(bad))
    at = open_page(BLOCK_SKIP)
    assert not at.exception and at.image  # the page's own figures and images still render
    assert any("Set `DYNN_CIFAR10`" in c.value for c in at.caption)
    at.sidebar.radio(key="source").set_value(TEST).run()
    assert not at.exception
    assert any("Could not read CIFAR-10" in e.value for e in at.sidebar.error)
    at.switch_page(EARLY_EXITS).run()
    assert not at.exception and any("Choose an image" in i.value for i in at.info)


def test_block_skip_page_renders_with_its_test_set_panel():
    at = open_page(BLOCK_SKIP)
    assert at.title[0].value == "Block skipping"
    assert " of " in metric(at, "Blocks run")
    assert metric(at, "Compute").endswith("MFLOPs") and metric(at, "Latency").endswith("ms")
    assert "test set" in at.subheader[0].value  # the eval table matches the shipped weights
    assert not at.error and not at.warning


def test_the_block_counts_and_class_grid_are_the_eval_tables_at_the_threshold():
    at = open_page(BLOCK_SKIP)
    table = json.loads((ROOT / "assets" / "eval" / "block_skip.json").read_text())
    for value in (0.0, 0.5, 0.9):
        slider(at, "Gate threshold").set_value(value).run()
        shares, rows = panel_tables(at)
        point = next(p for p in table["points"] if p["value"] == value)
        counts = point["blocks_histogram"]
        assert shares == [f"{100 * (c / sum(counts)):.0f}" for c in counts]
        assert rows == [[f"{100 * r:.0f}" for r in row] for row in point["class_block_rate"]]


def test_gate_threshold_and_the_all_blocks_toggle_change_the_path():
    at = open_page(BLOCK_SKIP)
    slider(at, "Gate threshold").set_value(0.0).run()
    assert metric(at, "Blocks run") == "6 of 6"
    full = float(metric(at, "Compute").split()[0])
    slider(at, "Gate threshold").set_value(1.0).run()
    assert not at.exception
    strict = float(metric(at, "Compute").split()[0])
    assert strict < full and metric(at, "Blocks run") != "6 of 6"
    at.toggle(key="knob:block_skip:all_on").set_value(True).run()
    assert metric(at, "Blocks run") == "6 of 6" and float(metric(at, "Compute").split()[0]) == full
    # the static network is one measurement, not compared with a second one of itself
    assert next(m for m in at.metric if m.label == "Latency").delta.startswith("1.00x the full network")


def test_the_per_block_record_lists_every_gated_block_as_it_ran():
    at = open_page(BLOCK_SKIP)
    header = "| block | gate probability | ran | MFLOPs | static MFLOPs |"
    ran, total = (int(n) for n in metric(at, "Blocks run").split(" of "))
    rows = markdown_table(at, header)
    assert len(rows) == total and [r[2] for r in rows].count("yes") == ran
    assert all(float(r[3]) == (float(r[4]) if r[2] == "yes" else 0) for r in rows)  # a skipped block costs nothing
    threshold = slider(at, "Gate threshold").value
    assert all((float(r[1]) >= threshold) == (r[2] == "yes") for r in rows)
    assert any(c.value.endswith(f"the threshold, {threshold:.2f}.") for c in at.caption)
    at.toggle(key="knob:block_skip:all_on").set_value(True).run()
    assert {(r[1], r[2]) for r in markdown_table(at, header)} == {("gates off", "yes")}
    assert not at.dataframe  # a few rows: Markdown, without pandas and a data grid


def test_block_skip_page_takes_an_upload(photos):
    at = open_page(BLOCK_SKIP)
    upload(at, photos[2].name, photos[2].read_bytes(), "image/jpeg")
    assert not at.exception and metric(at, "Blocks run")


def test_tokens_page_renders_with_maps_comparison_and_test_set_panel():
    at = open_page(TOKENS)
    assert at.title[0].value == "Tokens"
    assert metric(at, "Compute").endswith("MFLOPs") and metric(at, "Latency").endswith("ms")
    assert "test set" in " ".join(s.value for s in at.subheader)
    assert any(s.value == "Prune vs merge at the same budget" for s in at.subheader)
    assert not at.error and not at.warning


def test_tokens_draws_each_mechanism_in_one_colour_on_both_charts():
    """The token-count lines of the compared settings take their mechanism's accuracy-curve colour."""
    at = open_page(TOKENS)
    seen: dict[str, set[str]] = {}
    for chart in at.get("plotly_chart"):
        for series in json.loads(chart.proto.spec)["data"]:
            for mechanism in ("prune (EViT)", "merge (ToMe)"):
                if series.get("name", "").startswith(mechanism) and "line" in series:
                    seen.setdefault(mechanism, set()).add(series["line"]["color"])
    assert set(seen) == {"prune (EViT)", "merge (ToMe)"}
    assert all(len(colours) == 1 for colours in seen.values()) and seen["prune (EViT)"] != seen["merge (ToMe)"]
    names = [s["name"] for c in at.get("plotly_chart") for s in json.loads(c.proto.spec)["data"] if "name" in s]
    assert any(n.startswith("prune (EViT), ") for n in names) and "prune (EViT)" in names  # both charts seen


def test_token_modes_and_keep_ratio_change_the_tokens_and_the_compute():
    at = open_page(TOKENS)
    mode = at.selectbox(key="knob:vit_tokens:mode")
    mode.set_value("none").run()
    static_tokens, full = metric(at, "Tokens in the last block"), float(metric(at, "Compute").split()[0])
    assert static_tokens.split(" of ")[0] == static_tokens.split(" of ")[1]  # every token kept
    assert slider(at, "Keep ratio (prune)").disabled and slider(at, "Tokens merged per layer (merge)").disabled
    at.selectbox(key="knob:vit_tokens:mode").set_value("prune").run()
    slider(at, "Keep ratio (prune)").set_value(1.0).run()  # sheds nothing: the static network's own run
    assert next(m for m in at.metric if m.label == "Latency").delta.startswith("1.00x the full network")
    slider(at, "Keep ratio (prune)").set_value(0.3).run()
    pruned = float(metric(at, "Compute").split()[0])
    assert pruned < full and metric(at, "Tokens in the last block") != static_tokens
    at.selectbox(key="knob:vit_tokens:mode").set_value("merge").run()
    slider(at, "Tokens merged per layer (merge)").set_value(16).run()
    assert not at.exception and float(metric(at, "Compute").split()[0]) < full
    assert any(m.label == "Test accuracy at this setting" for m in at.metric)  # r = 16 was measured


def test_the_per_unit_record_lists_the_token_reductions_and_experts():
    at = open_page(TOKENS)
    rows = markdown_table(at, "| unit | kind | ran | MFLOPs | static MFLOPs |")
    kinds = [r[1] for r in rows]
    assert kinds.count("token") == 3 and kinds.count("expert") == 2
    total = sum(float(r[3]) for r in rows)
    assert abs(total - float(metric(at, "Compute").split()[0])) < 0.05 * len(rows)  # each cell rounded to 0.01
    assert not at.dataframe


def test_the_pruned_maps_count_every_token_each_block_passes_on():
    """A fused token that a later block keeps is still a token: after two pruning blocks
    there can be two fused tokens, and the captions must count both."""
    from models.vit import REDUCE_AT, Policy, token_counts

    at, fused = open_page(TOKENS), []
    for keep in (0.8, 0.6, 0.3):
        slider(at, "Keep ratio (prune)").set_value(keep).run()
        captions = [c for image in at.get("image") for c in (i.caption for i in image.proto.imgs)]
        found = [re.fullmatch(r"after block \d+: (\d+) kept \+ (\d+) fused", c) for c in captions]
        shown = [int(m[1]) + int(m[2]) for m in found if m]  # patch tokens after each pruning block
        expected = [token_counts(Policy(mode="prune", keep_ratio=keep))[i][1] - 1 for i in REDUCE_AT]
        assert shown == expected, keep
        assert shown[-1] + 1 == int(metric(at, "Tokens in the last block").split(" of ")[0])
        fused += [int(m[2]) for m in found if m]
    assert max(fused) > 1  # on the example photo, an earlier fused token survives at keep 0.8 and 0.6


def test_tokens_names_the_nearest_measured_setting_where_the_test_set_was_not_swept():
    """Merging was swept at even r only: at r = 7 the test-set numbers are r = 6's and say so,
    and this setting's own token counts stay on the chart."""
    at = open_page(TOKENS)
    at.selectbox(key="knob:vit_tokens:mode").set_value("merge").run()
    slider(at, "Tokens merged per layer (merge)").set_value(7).run()
    labels = [m.label for m in at.metric]
    assert "Test accuracy at r = 6, nearest measured" in labels
    assert "Test accuracy at this setting" not in labels and not at.exception


def test_experts_page_k_and_capacity_change_compute_and_drops():
    at = open_page(EXPERTS)
    assert at.title[0].value == "Experts"
    assert metric(at, "Tokens dropped (2 MoE layers)").startswith("0 of")  # the default capacity never drops
    assert "test set" in " ".join(s.value for s in at.subheader) and not at.warning
    k2 = float(metric(at, "Compute").split()[0])
    slider(at, "Experts per token (k)").set_value(1).run()
    assert float(metric(at, "Compute").split()[0]) < k2
    slider(at, "Capacity factor C").set_value(0.25).run()
    assert not at.exception and not metric(at, "Tokens dropped (2 MoE layers)").startswith("0 of")
    assert any("reset one of the two knobs" in i.value for i in at.info)  # k=1, C=0.25 was not swept


def test_the_sweep_charts_say_where_this_expert_setting_is():
    at = open_page(EXPERTS)  # k = 2, C = 4: on the k sweep; past the capacity sweep, which stops at 2
    captions = " ".join(c.value for c in at.caption)
    assert "red: this setting, k = 2" in captions and "every C from 2 up drops nothing, as C = 4 does" in captions
    slider(at, "Capacity factor C").set_value(1.0).run()
    captions = " ".join(c.value for c in at.caption)
    assert "red: this setting, C = 1" in captions and "capacity C = 1 can drop choices" in captions


@pytest.mark.parametrize("page", [TOKENS, EXPERTS])
def test_transformer_pages_take_an_upload(photos, page):
    at = open_page(page)
    upload(at, photos[2].name, photos[2].read_bytes(), "image/jpeg")
    assert not at.exception and metric(at, "Prediction") and metric(at, "True label") == "unknown"


def metrics(at: AppTest, label: str) -> list[str]:
    return [m.value for m in at.metric if m.label == label]


def test_compare_page_shows_each_configuration_side_by_side():
    at = open_page(COMPARE)
    assert at.title[0].value == "Compare strategies"
    assert len(metrics(at, "Compute")) == 2 and all(v.endswith("MFLOPs") for v in metrics(at, "Compute"))
    assert all(v.endswith("ms") for v in metrics(at, "Latency"))
    at.segmented_control(key="compare:count").set_value(4).run()
    assert not at.exception and len(metrics(at, "Compute")) == 4
    assert {s.value for s in at.selectbox if s.label == "Model"} == set(models.available())  # one of each
    assert any(s.value.startswith("Accuracy vs compute") for s in at.subheader)
    assert [b.label for b in at.get("download_button")] == [
        "Download the comparison (PNG)", "Download the traces (JSON)"
    ]  # fmt: skip
    assert not at.error and not at.warning
    chart = next(c for c in at.get("plotly_chart") if "#1 " in c.proto.spec)  # the curves and the stars
    names = [trace["name"] for trace in json.loads(chart.proto.spec)["data"]]
    assert not [n for n in names if any(m in n for m in models.available())]  # titles, not registry names
    assert "#2 Early exits — now" in names and "Early exits: max softmax probability" in names


def test_matching_a_budget_sets_every_configuration_under_it():
    at = open_page(COMPARE)
    before = [s.value for s in at.slider if s.label != "Budget: mean MFLOPs per test image"]
    at.slider(key="compare:budget").set_value(150.0).run()
    at.button[0].click().run()
    assert not at.exception
    matched = [c.value for c in at.caption if c.value.startswith("Matched to the budget")]
    assert len(matched) == 2
    for text in matched:
        mflops = float(text.split(": ")[-1].split()[0])
        assert mflops <= 150.0 or "out of reach" in text
    assert [s.value for s in at.slider if s.label != "Budget: mean MFLOPs per test image"] != before


def test_a_configuration_on_no_measured_curve_is_left_as_it_is_by_matching():
    """The transformer's eval table sweeps one mechanism at a time, the others static: merging
    with a capacity that drops choices lies on none of its curves. Matching a budget must not
    switch it to pruning at full capacity without a word."""
    at = open_page(COMPARE)
    at.selectbox(key="compare:0:model").set_value("vit_tokens").run()
    at.selectbox(key="compare:0:vit_tokens:mode").set_value("merge").run()
    at.slider(key="compare:0:vit_tokens:capacity").set_value(1.0).run()
    at.button[0].click().run()
    assert not at.exception
    assert at.selectbox(key="compare:0:vit_tokens:mode").value == "merge"
    assert at.slider(key="compare:0:vit_tokens:capacity").value == 1.0
    assert any(c.value.startswith("Not matched: the test set was swept one mechanism at a time") for c in at.caption)
    assert sum(c.value.startswith("Matched to the budget") for c in at.caption) == 1  # the other configuration


def test_the_budget_slider_starts_where_the_cheapest_setting_fits():
    at = open_page(COMPARE)
    at.selectbox(key="compare:0:model").set_value("block_skip").run()
    at.selectbox(key="compare:1:model").set_value("pixel_mask").run()
    budget = at.slider(key="compare:budget")
    budget.set_value(budget.min).run()
    at.button[0].click().run()
    matched = [c.value for c in at.caption if c.value.startswith("Matched to the budget")]
    assert len(matched) == 2 and sum("out of reach" not in text for text in matched) == 1  # the cheaper model fits


def test_video_page_samples_runs_and_reuses(photos):
    at = open_page(VIDEO)
    assert any("Upload a video" in i.value for i in at.info)
    assert any("the image input above is for the other pages" in c.value for c in at.sidebar.caption)
    at.get("file_uploader")[0].set_value(("clip.mp4", make_video(seconds=2.0, still_from=0.5), "video/mp4")).run()
    assert not at.exception and not at.error
    assert metric(at, "Frames sampled") == "4" and metric(at, "Model runs") == "4"
    at.slider(key="video:reuse").set_value(0.02).run()
    assert int(metric(at, "Model runs")) < 4  # the still frames reuse the last result
    scrubber = at.select_slider(key="video:frame")
    assert scrubber.format_func(3) == "1.50 s"  # the frames are named by their time: 2 per second
    scrubber.set_value(3).run()
    assert not at.exception and metric(at, "Compute") == "0.0 MFLOPs"
    at.selectbox(key="video:model").set_value("vit_tokens").run()
    assert not at.exception and metric(at, "Prediction")


def test_video_page_runs_the_sample_clip_without_a_video():
    """With nothing uploaded, the sample clip (two example photos, 6 s) runs like an upload: its
    still seconds are reused frames. An upload takes its place, and the toggle waits."""
    at = open_page(VIDEO)
    at.toggle(key="video:sample").set_value(True).run()
    assert not at.exception and not at.error
    assert metric(at, "Frames sampled") == "12" and metric(at, "Model runs") == "12"  # 2 per second
    assert any(c.value.startswith("sample clip: 320x240, mpeg4, 6.0 s; 12 frames") for c in at.caption)
    at.slider(key="video:reuse").set_value(0.01).run()
    assert 6 <= int(metric(at, "Model runs")) < 12  # the held photo's frames are reused, the zooms are not
    at.get("file_uploader")[0].set_value(("clip.mp4", make_video(seconds=2.0), "video/mp4")).run()
    assert metric(at, "Frames sampled") == "4" and at.toggle(key="video:sample").disabled


def test_video_page_samples_across_the_whole_video():
    at = open_page(VIDEO)
    at.get("file_uploader")[0].set_value(("long.mp4", make_video(seconds=12.0, gop=10), "video/mp4")).run()
    at.slider(key="video:max_frames").set_value(5).run()
    assert any("whole video" in w.value for w in at.warning)  # from the start: the first 2 s only
    at.radio(key="video:spread").set_value("across the whole video").run()
    assert not at.exception and not at.warning and metric(at, "Frames sampled") == "5"
    assert at.slider(key="video:fps").disabled
    caption = " ".join(c.value for c in at.caption)
    assert "one every 2.40 s across the whole video" in caption, caption


def test_video_keeps_its_settings_and_its_video_while_the_user_visits_others():
    """The sampling, the model, its knobs and the reuse threshold are kept; Streamlit empties the
    uploader, so the page keeps the last video itself and says so; a new upload replaces it, and
    removing that leaves none."""
    at = open_page(VIDEO)
    at.get("file_uploader")[0].set_value(("clip.mp4", make_video(seconds=2.0), "video/mp4")).run()
    at.radio(key="video:spread").set_value("across the whole video").run()
    at.slider(key="video:max_frames").set_value(10).run()
    at.selectbox(key="video:model").set_value("block_skip").run()
    at.slider(key="video:block_skip:threshold").set_value(0.6).run()
    at.slider(key="video:reuse").set_value(0.05).run()
    frames = metric(at, "Frames sampled")
    at.switch_page(EARLY_EXITS).run()
    at.switch_page(VIDEO).run()
    assert not at.exception and not at.warning and not at.info
    assert any(c.value.startswith("Still using **clip.mp4**") for c in at.caption)
    assert metric(at, "Frames sampled") == frames and at.toggle(key="video:sample").disabled
    assert (
        at.radio(key="video:spread").value == "across the whole video" and at.slider(key="video:max_frames").value == 10
    )
    assert at.selectbox(key="video:model").value == "block_skip" and at.slider(key="video:reuse").value == 0.05
    assert at.slider(key="video:block_skip:threshold").value == 0.6
    at.slider(key="video:reuse").set_value(0.0).run()  # a rerun on the page keeps the video
    assert metric(at, "Frames sampled") == frames and not at.exception
    at.get("file_uploader")[0].set_value(("other.gif", make_video(seconds=1.0, fmt="gif"), "image/gif")).run()
    assert not any(c.value.startswith("Still using") for c in at.caption)
    assert any(c.value.startswith("other.gif: ") for c in at.caption) and not at.exception
    at.get("file_uploader")[0].set_value(None).run()  # the user removes it
    assert any("Upload a video" in i.value for i in at.info) and not at.exception


def test_moving_the_reuse_knob_runs_the_model_only_on_frames_not_run_before(monkeypatch):
    """Each frame's trace is kept for the model and knobs: a new reuse threshold picks among
    them, and runs the model only on a frame no earlier threshold ran it on."""
    from models.early_exit import EarlyExitResNet

    at = open_page(VIDEO)
    at.get("file_uploader")[0].set_value(("clip.mp4", make_video(seconds=2.0, still_from=0.5), "video/mp4")).run()
    assert metric(at, "Model runs") == "4"
    honest, calls = EarlyExitResNet.trace, []
    monkeypatch.setattr(EarlyExitResNet, "trace", lambda self, x, **k: calls.append(1) or honest(self, x, **k))
    at.slider(key="video:reuse").set_value(0.02).run()
    assert int(metric(at, "Model runs")) < 4 and calls == []  # fewer frames, each already run
    at.slider(key="video:reuse").set_value(0.0).run()
    assert metric(at, "Model runs") == "4" and calls == [] and not at.exception
    at.selectbox(key="video:model").set_value("vit_tokens").run()  # another model: its own runs
    assert metric(at, "Model runs") == "4"


def test_a_shorter_video_after_scrubbing_far_does_not_stop_the_page():
    """The scrubber's range follows the video: its old value is not kept past the new end."""
    at = open_page(VIDEO)
    at.get("file_uploader")[0].set_value(("long.mp4", make_video(seconds=4.0), "video/mp4")).run()
    at.select_slider(key="video:frame").set_value(7).run()
    at.get("file_uploader")[0].set_value(("short.mp4", make_video(seconds=1.5), "video/mp4")).run()
    assert not at.exception and at.select_slider(key="video:frame").options == ["0.00 s", "0.50 s", "1.00 s"]


def test_frames_under_10_ms_apart_each_get_a_place_on_the_scrubber():
    """Streamlit maps a repeated label to its last option: a slow-motion clip sampled across its
    length (frames 4 ms apart) would have every other frame out of reach with labels to 10 ms."""
    at = open_page(VIDEO)
    at.get("file_uploader")[0].set_value(("slow.mp4", make_video(seconds=0.5, fps=240), "video/mp4")).run()
    at.radio(key="video:spread").set_value("across the whole video").run()
    at.slider(key="video:max_frames").set_value(300).run()
    scrubber = at.select_slider(key="video:frame")
    assert len(set(scrubber.options)) == len(scrubber.options) > 100
    assert scrubber.options[0] == "frame 1, 0.000 s"
    scrubber.set_value(2).run()
    assert not at.exception and at.select_slider(key="video:frame").value == 2


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [("empty.mp4", b"", "empty"), ("notes.mp4", b"not a video" * 40, "not a video")],
)
def test_bad_video_shows_a_message_and_the_next_video_works(name, data, message):
    at = open_page(VIDEO)
    at.get("file_uploader")[0].set_value((name, data, "video/mp4")).run()
    assert not at.exception and any(message in e.value for e in at.error), [e.value for e in at.error]
    at.get("file_uploader")[0].set_value(("clip.gif", make_video(seconds=1.0, fmt="gif"), "image/gif")).run()
    assert not at.exception and not at.error and metric(at, "Frames sampled") == "2"


def test_pixels_page_masks_compute_and_attribution():
    at = open_page(PIXELS)
    assert at.title[0].value == "Pixels"
    assert metric(at, "Compute").endswith("MFLOPs") and metric(at, "Latency").endswith("ms")
    assert "test set" in " ".join(s.value for s in at.subheader) and not at.warning and not at.error
    default = float(metric(at, "Compute").split()[0])
    slider(at, "Mask threshold").set_value(0.95).run()
    assert float(metric(at, "Compute").split()[0]) < default
    at.toggle(key="knob:pixel_mask:dense").set_value(True).run()
    assert metric(at, "Conv FLOPs run") == "100%"
    assert not any(c.value.startswith("Overlap") for c in at.caption)  # a dense run has no second row


def test_the_per_block_record_counts_the_positions_each_mask_kept():
    at = open_page(PIXELS)
    header = "| block | mean mask probability | positions kept | positions | MFLOPs | dense MFLOPs |"
    rows = markdown_table(at, header)
    assert len(rows) == len(models.get("pixel_mask", pretrained=False).gates)  # one per masked block
    assert all(0 <= int(r[2]) <= int(r[3]) and float(r[4]) <= float(r[5]) for r in rows)
    assert any(int(r[2]) < int(r[3]) for r in rows)  # the default threshold leaves positions out
    at.toggle(key="knob:pixel_mask:dense").set_value(True).run()
    rows = markdown_table(at, header)
    assert all(r[1] == "masks off" and r[2] == r[3] and r[4] == r[5] for r in rows)
    assert not at.dataframe


def test_a_mask_threshold_move_recomputes_the_runs_maps_but_not_the_static_networks(monkeypatch):
    """The static network's maps depend on the image and the class they explain, not on the
    knobs: a move that keeps the prediction reuses them; the run's maps follow the move."""
    import app.attribution

    app.attribution.attribution_map.clear()  # other tests drew this page and image: their maps are cached
    calls = []
    real = app.attribution.attribute
    monkeypatch.setattr(app.attribution, "attribute",
                        lambda model, x, trace, method, static: calls.append(static) or real(model, x, trace, method, static=static))  # fmt: skip
    at = open_page(PIXELS)
    assert sorted(calls) == [False, False, True, True]  # Grad-CAM and saliency, run and static
    prediction = metric(at, "Prediction")
    calls.clear()
    slider(at, "Mask threshold").set_value(0.95).run()
    assert metric(at, "Prediction") == prediction
    assert any(c.value.startswith("Overlap") for c in at.caption)  # still a dynamic run beside the static one
    assert calls == [False, False]


@pytest.mark.parametrize(
    ("page", "knob", "value"), [(PIXELS, "Mask threshold", 0.95), (TOKENS, "Keep ratio (prune)", 0.5)]
)
def test_a_knob_move_does_not_resize_a_large_upload_again(page, knob, value, monkeypatch):
    """The pictures over the image and the enlarged model input start from thumbnails of the
    upload, made once per image (6-9 ms each from a large upload, shrunk to 1024 pixels a side)."""
    import io

    import numpy as np
    from PIL import Image

    import app.common

    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(photo, "JPEG")
    at = upload(open_page(page), "large.jpg", photo.getvalue(), "image/jpeg")
    resized = []
    real = app.common.square_thumbnail
    monkeypatch.setattr(app.common, "square_thumbnail", lambda image, size: resized.append(size) or real(image, size))
    slider(at, knob).set_value(value).run()
    assert not at.exception and metric(at, "Compute")
    assert resized == []


def test_attribution_panel_slow_methods_and_other_models():
    at = open_page(PIXELS)
    agreement = [c.value for c in at.caption if "by chance" in c.value]
    assert len(agreement) == 2  # Grad-CAM and saliency against the masks
    at.button(key="attr_slow:pixel_mask").click().run()
    assert not at.exception
    assert len([c.value for c in at.caption if "by chance" in c.value]) == 4
    at.selectbox(key="attribution:model").set_value("early_exit").run()
    assert not at.exception
    rows = [m.value for m in at.markdown if m.value.startswith("**This run**") or m.value.startswith("**Static")]
    assert rows[0].startswith("**This run**: exit") and "the last" in rows[1]
