"""``make bench``: performance figures of the model pages, printed as JSON and written to
``artifacts/bench.json``. Benchmarks report numbers; the tests assert behaviour.

- knob change, server side: the real server's rerun of the page's knob fragment after a slider
  move, from a headless websocket session (median ms), on the early-exit page (instant
  re-decision) and the block-skipping, tokens, experts and pixels pages (a forward pass each);
- slider release to updated figure in Chromium (median ms), to the page settled (the frame
  after its last change, the test-set panel's included), and the real server's time for the
  same reruns (rerun request to ``script_finished``, at the network layer);
- cold start (s): from starting the server to the early-exit page's first figure drawn and its
  first run finished (every figure and panel of the page: an upper bound on the first figure),
  ``make run``'s ``python -m app`` (imports started once the server is up) against plain
  ``streamlit run app/main.py``;
- model latency per threshold at batch size 1 on test images, and the ratio to the static
  network at the operating point the issue names: early exits at <= 50 % of the FLOPs, block
  skipping at its default threshold, token pruning at its cheapest keep ratio within 1.5 points,
  pixel masks over their thresholds against dense (needs ``$DYNN_CIFAR10``); with the app's
  threads (half the cores), then with torch's default;
- the Video page's pipeline on a 10 s 640x360 clip sampled at 5 frames per second, and a
  1-minute clip sampled across its length with and without seeking;
- the machine, and its speed before the first section and after the last (one reference
  matrix product, ``reference_product_us``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from playwright.sync_api import TimeoutError as PlaywrightTimeout

import models
from app.models_cache import INFERENCE_THREADS
from models.core import DynamicModel, eval_table_path
from models.data import load_split, resolve_source, to_tensor
from tests.bench.session import find_slider, headless_session
from tests.support import APP, ROOT, STREAMLIT_RUN, chromium_browser, serve_app, threshold_slider, wait_idle

OUT = ROOT / "artifacts" / "bench.json"


def server_side_knob_changes(moves: dict[str, tuple[str, np.ndarray]]) -> dict[str, dict]:
    """Knob change, server side: the real server rerunning a page's knob fragment, timed by a
    headless session (:mod:`tests.bench.session`) from the rerun request to ``script_finished``,
    per page (URL path) with its slider's label and the values it is set to in turn. The first
    move on each page is left out: it can be the first forward pass at a new path, where the
    page measures that path's latency once (six runs)."""
    results = {}
    with (
        serve_app(run=("-m", "tests.bench.nodelay", str(ROOT / "app" / "main.py"))) as url,
        headless_session(url) as session,
    ):
        for page, (label, values) in moves.items():
            slider = find_slider(session.open(page), label)
            times = [session.move_slider(slider, value)[0] for value in values][1:]
            results[page] = {"median_ms": statistics.median(times), "max_ms": max(times), "moves": len(times)}
    return results


COLD_STARTS = {"make run": APP, "streamlit run": STREAMLIT_RUN}  # the README's command; plain Streamlit


def browser_figures(moves: int = 15, rounds: int = 3) -> dict:
    """Cold start to the first rendered early-exit figure, ``rounds`` times for each command in
    :data:`COLD_STARTS` (alternating, so that drift in the machine's speed hits both alike); then
    the slider moves (:func:`slider_moves`) on a page started as ``make run`` starts it."""
    starts: dict[str, list[dict]] = {label: [] for label in COLD_STARTS}
    for _ in range(rounds):
        for label, run in COLD_STARTS.items():
            with cold_page(run) as (_, phases):
                starts[label].append(phases)
    with cold_page(APP) as (page, _):
        figures = slider_moves(page, moves)
    cold = {label: {"median_s": statistics.median(p["total_s"] for p in runs), "runs": runs}
            for label, runs in starts.items()}  # fmt: skip
    return {"cold_start_s": cold["make run"]["median_s"], "cold_start": cold, **figures}


@contextmanager
def cold_page(run: tuple[str, ...]) -> Iterator[tuple[Any, dict]]:
    """A fresh server (``run``) and Chromium, the early-exit page loaded until its first figure is
    drawn and the run has finished; yields the page and the times: the server coming up,
    Chromium's launch, the page's first run and drawing, and their total (s)."""
    start = time.perf_counter()
    with serve_app(run=run) as url:
        healthy = time.perf_counter()
        with chromium_browser() as browser:
            launched = time.perf_counter()
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{url}/early_exits")
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            wait_idle(page)
            drawn = time.perf_counter()
            yield page, {"total_s": drawn - start, "server_up_s": healthy - start,
                         "chromium_launch_s": launched - healthy, "page_to_figure_s": drawn - launched}  # fmt: skip


QUIET_MS = 300
# In the page (its clock): when the last key went down, and when the frame after the document's
# last change (elements, text or attributes) had been drawn: a table's layout and paint come
# after the one change that inserts it, so the change's own time would leave them out.
WATCH_CHANGES = """() => {
  window.dynnLastChange = window.dynnKeyDown = performance.now();
  document.addEventListener("keydown", () => { window.dynnKeyDown = performance.now(); }, true);
  const drawn = () => requestAnimationFrame(() => setTimeout(() => { window.dynnLastChange = performance.now(); }));
  new MutationObserver(drawn)
    .observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def slider_moves(page, moves: int) -> dict:
    """Slider release (a key press) to the updated confidence figure; to the page settled (the
    frame after its last change in the document, the test-set panel's included, once 300 ms
    pass without one: the charts and tables below the figure are drawn after it; a move that
    does not settle within 30 s counts in ``unsettled`` instead); and
    the real server's time from the rerun request leaving the browser to its ``script_finished``
    message arriving, read at the network layer (Chrome DevTools Protocol frame timestamps), so
    that it does not wait for the page's drawing. The frames are only kept during a move and
    decoded after its timing."""
    frames: list[tuple[str, dict]] = []
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.on("Network.webSocketFrameSent", lambda e: frames.append(("sent", e)))
    cdp.on("Network.webSocketFrameReceived", lambda e: frames.append(("received", e)))
    page.evaluate(WATCH_CHANGES)
    thumb = threshold_slider(page)
    thumb.focus()
    times, settled, server, unsettled = [], [], [], 0
    for _ in range(moves):
        value = float(thumb.input_value())
        target = f"threshold {value - 0.01:.2f}"
        frames.clear()
        t0 = time.perf_counter()
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(
            "(t) => [...document.querySelectorAll('.js-plotly-plot text')].some(e => e.textContent === t)",
            arg=target, timeout=30_000,
        )  # fmt: skip
        times.append((time.perf_counter() - t0) * 1e3)
        wait_idle(page)
        try:
            page.wait_for_function(f"() => performance.now() - window.dynnLastChange > {QUIET_MS}", timeout=30_000)
            settled.append(page.evaluate("window.dynnLastChange - window.dynnKeyDown"))
        except PlaywrightTimeout:  # something kept changing: no sample, and the other figures kept
            unsettled += 1
        sent = next((e["timestamp"] for way, e in frames if way == "sent"), None)
        finished = next((e["timestamp"] for way, e in frames if way == "received" and message_type(e) == "script_finished"),
                        None)  # fmt: skip
        if sent is not None and finished is not None:  # a frame DevTools did not report: no sample
            server.append((finished - sent) * 1e3)
    return {"slider_to_figure_median_ms": statistics.median(times),
            "slider_to_page_settled_median_ms": statistics.median(settled) if settled else None, "unsettled": unsettled,
            "server_rerun_median_ms": statistics.median(server) if server else None, "server_samples": len(server),
            "moves": moves}  # fmt: skip


def message_type(event: dict) -> str:
    """The kind of a Streamlit message the browser received (binary frames are ForwardMsgs)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    if event["response"]["opcode"] != 2:
        return "text"
    msg = ForwardMsg()
    msg.ParseFromString(base64.b64decode(event["response"]["payloadData"]))
    return msg.WhichOneof("type") or ""


def model_latency(name: str, settings: dict[str, dict], point: str, static: str, n: int = 500) -> dict:
    """Mean batch-1 latency of the real dynamic path on test images, per knob setting
    (label -> knobs), and the ratio of setting ``point`` to setting ``static``: with the app's
    intra-op threads (half the cores: what the pages measure and show), then, where torch's
    default differs (every core it may use), with that (``torch_default``)."""
    if resolve_source() is None:
        return {"skipped": "set DYNN_CIFAR10 for the latency figures"}
    torch.set_grad_enabled(False)
    model = models.get(name)
    split = load_split("test").head(n)
    x = to_tensor(split.images, model.mean, model.std)
    default = torch.get_num_threads()
    thread_counts = {"app": INFERENCE_THREADS} | ({"torch_default": default} if default != INFERENCE_THREADS else {})
    result: dict[str, Any] = {"images": n, "point": point}
    try:
        for key, threads in thread_counts.items():
            torch.set_num_threads(threads)
            rows = latency_rows(model, x, split.labels, settings, point)
            ratio = rows[point]["mean_latency_ms"] / rows[static]["mean_latency_ms"]
            measured = {"threads": threads, "per_setting": rows, "latency_ratio_at_point": ratio}
            if key == "app":
                result |= measured
            else:
                result[key] = measured
    finally:
        torch.set_num_threads(default)
    return result


def latency_rows(model: DynamicModel, x: torch.Tensor, labels: np.ndarray, settings: dict[str, dict],
                 first: str) -> dict[str, dict]:  # fmt: skip
    """Each setting's mean latency, MFLOPs and accuracy over the images ``x``."""
    for i in range(20):  # warm-up
        model.trace(x[i : i + 1], **settings[first])
    # interleaved (every setting on an image before the next image) so that drift in the
    # machine's speed hits every setting alike, in a new order on each image so that no setting
    # always runs first on a new image or after the same one (in a fixed order, stop 20 measured
    # the last setting 25 % slower than one of equal cost that a separate pass found alike)
    # only each run's three numbers are kept, not its trace: holding every trace (its records'
    # tensors, thousands of them) grew the heap under the runs: in a separate run of this loop
    # (one thread, 300 images, twice each way; stop 23) the transformer's keep-0.65 ratio read
    # 0.92x with the traces held and 0.855x without
    runs: dict[str, list[tuple[float, float, bool]]] = {label: [] for label in settings}
    names, rng = list(settings), np.random.default_rng(0)
    for i in range(len(x)):
        for j in rng.permutation(len(names)):
            tr = model.trace(x[i : i + 1], **settings[names[j]])
            runs[names[j]].append((tr.latency_ms, tr.mflops, tr.prediction == labels[i]))
    rows = {}
    for label, each in runs.items():
        latency, mflops, right = np.mean(each, axis=0)
        rows[label] = {"knobs": settings[label], "mean_latency_ms": float(latency), "mean_mflops": float(mflops),
                       "accuracy": float(right)}  # fmt: skip
    return rows


def thresholds(values: set[float]) -> dict[str, dict]:
    return {f"threshold={v:g}": {"threshold": v} for v in sorted(values)}


def early_exit_latency() -> dict:
    table = json.loads(eval_table_path("early_exit").read_text())
    half = table["summary"]["best_at_half_flops"]["threshold"]
    default = table["default_knobs"]["threshold"]
    settings = thresholds({0.5, 0.8, 0.9, 0.95, 0.99, default, half, 1.0})
    point = f"threshold={half:g}"
    chosen = table["summary"].get("best_at_half_flops_any_criterion")  # criterion chosen on validation too
    if chosen:  # the point: the most accurate at <= 50 % of the FLOPs
        point = f"{chosen['criterion']} threshold={chosen['threshold']:g}"
        settings[point] = {"criterion": chosen["criterion"], "threshold": chosen["threshold"]}
    return model_latency("early_exit", settings, point, "threshold=1")


def block_skip_latency() -> dict:
    default = json.loads(eval_table_path("block_skip").read_text())["default_knobs"]["threshold"]
    settings = thresholds({0.0, 0.25, 0.5, 0.75, 0.9, default})
    return model_latency("block_skip", settings, f"threshold={default:g}", "threshold=0")


def vit_latency() -> dict:
    """Pruning at the issue's point, the cheapest keep ratio within 1.5 points of every token
    (chosen on validation; it saves >= 30 % of the FLOPs), the keep ratio saving >= 30 %,
    other keep ratios, merging and the experts' k, against every token."""
    table = json.loads(eval_table_path("vit_tokens").read_text())
    chosen = table["summary"]["prune_within_1.5_points"]  # its FLOP saving and drop go with the ratio
    point = chosen["value"]
    at_30 = table["summary"]["prune_at_30pct_saving"]["value"]
    settings: dict[str, dict] = {"none": {"mode": "none"}}
    for keep in sorted({0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, point, at_30, table["default_knobs"]["keep_ratio"]}):
        settings[f"prune keep={keep:g}"] = {"mode": "prune", "keep_ratio": keep}
    for r in (4, 8, 16):
        settings[f"merge r={r}"] = {"mode": "merge", "merge_r": r}
    for k in (1, 4):
        settings[f"top_k={k}"] = {"mode": "none", "top_k": k}
    return {**model_latency("vit_tokens", settings, f"prune keep={point:g}", "none"), "point_on_test": chosen}


def pixel_latency() -> dict:
    """The sparse (gather, compute, scatter) masked blocks over the threshold range against the
    dense network (threshold 0)."""
    default = json.loads(eval_table_path("pixel_mask").read_text())["default_knobs"]["threshold"]
    settings = thresholds({0.0, 0.25, 0.5, 0.75, 0.9, 0.95, default})
    return model_latency("pixel_mask", settings, f"threshold={default:g}", "threshold=0")


def video_pipeline(seconds: float = 10.0, size: tuple[int, int] = (640, 360), fps: float = 5.0) -> dict:
    """The issue's clip: 10 s of 640x360 at 30 frames per second, sampled at 5 per second and run
    through the early-exit model at its default knobs, as the Video page does (decode, scale,
    preprocess, trace); wall time end to end."""
    from components.images import to_model_input
    from components.video import read_frames
    from tests.support import make_video

    data = make_video(seconds=seconds, fps=30, size=size, noise=24)
    torch.set_grad_enabled(False)
    model = models.get("early_exit")
    model.trace(torch.zeros(1, 3, 32, 32))  # warm-up, as the app's model cache does
    start = time.perf_counter()
    video = read_frames(data, fps=fps, max_frames=300)
    decoded = time.perf_counter()
    traces = [
        model.trace(to_model_input(f.image, size=model.input_size, mean=model.mean, std=model.std))
        for f in video.frames
    ]
    done = time.perf_counter()
    return {
        "clip": f"{seconds:g} s, {size[0]}x{size[1]}, 30 fps, film grain, {len(data) / 1e6:.2f} MB mpeg4",
        "frames_sampled": len(video.frames),
        "decode_s": decoded - start,
        "inference_s": done - decoded,
        "total_s": done - start,
        "mean_mflops": float(np.mean([t.mflops for t in traces])),
    }


def video_spread(seconds: float = 60.0, frames: int = 15) -> dict:
    """Sampling a 1-minute 640x360 clip (30 fps, a keyframe every 2 s) across its whole length, one
    frame every 4 s (samples 2 s apart or closer are decoded straight on, not sought):
    seeking past the frames between samples, against decoding every frame (seeking off)."""
    from components import video
    from tests.support import make_video

    data = make_video(seconds=seconds, fps=30, size=(640, 360), noise=24, gop=60)
    runs, seek_gap = {}, video.SEEK_GAP
    try:
        for label, gap in (("seeking", seek_gap), ("every_frame", math.inf)):
            video.SEEK_GAP = gap
            start = time.perf_counter()
            clip = video.read_frames(data, fps=1.0, max_frames=frames, spread=True)
            runs[label] = {"decode_s": time.perf_counter() - start, "frames_decoded": clip.decoded,
                           "frames_sampled": len(clip.frames)}  # fmt: skip
    finally:
        video.SEEK_GAP = seek_gap
    return {"clip": f"{seconds:g} s, 640x360, 30 fps, keyframe every 2 s, {len(data) / 1e6:.1f} MB mpeg4",
            "frames_asked": frames, **runs}  # fmt: skip


def machine() -> dict:
    """What the figures were measured on: timings from two machines are not comparable, nor
    from one machine at two speeds (:func:`reference_product_us`)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "cores": os.cpu_count(), "avx512": "avx512f" in flags, "avx2": "avx2" in flags,
            "torch": str(torch.__version__), "torch_threads": torch.get_num_threads(),
            "reference_product_us": reference_product_us()}  # fmt: skip


def reference_product_us() -> float:
    """The machine's speed now: the median time of one matrix product the size of a batch-1
    transformer MLP's (65x128 by 128x512), in microseconds. On the project's machine it drifts
    between hours (115-150 µs), and every batch-1 latency with it: the bench records it before
    its first section and after its last, so that two runs' figures can be told apart."""
    from torch.utils.benchmark import Timer

    a, w = torch.randn(65, 128), torch.randn(128, 512)
    return round(Timer("a @ w", globals={"a": a, "w": w}).blocked_autorange(min_run_time=1).median * 1e6, 1)


KNOB_MOVES = {
    "early_exits": ("Confidence threshold", np.round(np.linspace(0.5, 0.99, 21), 2)),
    "block_skip": ("Gate threshold", np.round(np.linspace(0.05, 1.0, 21), 2)),
    "tokens": ("Keep ratio (prune)", np.round(np.linspace(0.3, 1.0, 16), 2)),
    "experts": ("Experts per token (k)", np.array([1, 2, 3, 4, 3, 2, 1, 2, 3])),
    "pixels": ("Mask threshold", np.round(np.linspace(0.05, 1.0, 21), 2)),
}


def main() -> None:
    """Each section in turn, ``artifacts/bench.json`` rewritten after each: a section that
    fails (the browser's, last, needs Chromium) keeps what the others measured."""
    sections = {
        "machine": machine,
        "early_exit_latency": early_exit_latency,
        "block_skip_latency": block_skip_latency,
        "vit_latency": vit_latency,
        "pixel_latency": pixel_latency,
        "video_pipeline": video_pipeline,
        "video_spread": video_spread,
        "server_side_knob_change": lambda: server_side_knob_changes(KNOB_MOVES),
        "browser": browser_figures,
        "machine_after": lambda: {"reference_product_us": reference_product_us()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name, measure in sections.items():
        results[name] = measure()
        OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {Path(OUT).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
