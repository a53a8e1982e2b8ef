"""Helpers shared by the browser tests and the benchmarks: the app's server on a free localhost
port, Debian's Chromium through Playwright, and waiting on Streamlit's own state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("DYNN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Streamlit marks its root with the script's state: "initial" before the first run has finished,
# "running" during one, "notRunning" after (as Streamlit's own e2e suite waits on it)
IDLE_JS = """() => document.querySelector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    && !document.querySelector('[data-testid="stStatusWidget"]')"""


APP = ("-m", "app")  # make run's command: streamlit run app/main.py, its imports started once the server is up
STREAMLIT_RUN = ("-m", "streamlit", "run", str(ROOT / "app" / "main.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(timeout: float = 60, *, run: tuple[str, ...] = APP) -> Iterator[str]:
    """The app headless on 127.0.0.1, as ``make run`` starts it; yields its URL once healthy.
    ``run``: the Python arguments before Streamlit's options (:data:`STREAMLIT_RUN`: plain
    ``streamlit run``; the benchmark's ``tests.bench.nodelay``)."""
    port = free_port()
    cmd = [sys.executable, *run, "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:  # the server's output, shown if it does not come up
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        log.seek(0)
                        output = log.read().decode(errors="replace")[-4000:]
                        raise RuntimeError(f"streamlit did not start; its output:\n{output}") from None
                    time.sleep(0.1)  # polling the server's health endpoint, not waiting on a page
            yield url
        finally:
            stop(proc)


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """Terminate a server, and kill it if it has not exited after ``grace`` seconds: a server
    left running would hold a core for the rest of the session."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def chromium_browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit has finished its script run (its status widget is gone)."""
    page.wait_for_function(IDLE_JS, timeout=timeout_ms)


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has=page.get_by_text(label, exact=True)).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def threshold_slider(page, label: str = "Confidence threshold"):
    return page.locator('[data-testid="stSlider"]').filter(has_text=label).get_by_role("slider")


VIDEO_CODECS = {  # container -> (encoder, pixel format), all in PyAV's bundled FFmpeg
    "mp4": ("mpeg4", "yuv420p"),
    "mov": ("mpeg4", "yuv420p"),
    "webm": ("libvpx-vp9", "yuv420p"),
    "mkv": ("mpeg4", "yuv420p"),
    "gif": ("gif", "rgb8"),
}


def make_video(
    *,
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (96, 64),
    fmt: str = "mp4",
    still_from: float | None = None,
    noise: int = 0,
    rotation: int = 0,
    gop: int | None = None,
    bframes: int = 0,
    start: float = 0.0,
) -> bytes:
    """A small synthetic clip encoded with PyAV: a bright square sliding over a gradient. From
    ``still_from`` seconds on the picture stops moving (frames for the reuse knob to skip).
    ``fmt``: ``mp4`` or ``mov`` (MPEG-4 part 2), ``webm`` (VP9) or ``gif``. ``noise``: the amplitude of
    fresh random grain on every frame, which makes the clip as costly to decode as camera
    footage (a clean synthetic clip compresses to almost nothing). ``rotation``: the display
    rotation the container records (degrees counter-clockwise; a phone's portrait clip: -90).
    ``gop``: frames from one keyframe to the next (the encoder's default when None); ``bframes``:
    B-frames between references (frames stored out of display order); ``start``: the first
    frame's timestamp in seconds (files cut from a stream keep their offset)."""
    import io

    import av
    import numpy as np

    codec, pix_fmt = VIDEO_CODECS[fmt]
    w, h = size
    buf = io.BytesIO()
    with av.open(buf, mode="w", format={"mkv": "matroska"}.get(fmt, fmt)) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if gop:
            stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = bframes
        if noise:
            stream.bit_rate = 4_000_000  # camera-like 4 Mbit/s, so the grain survives encoding
        rng = np.random.default_rng(0)
        base = np.broadcast_to(np.linspace(0, 200, w, dtype=np.uint8)[None, :, None], (h, w, 3))
        for i in range(round(seconds * fps)):
            t = i / fps if still_from is None else min(i / fps, still_from)
            frame = base.copy()
            x = int((w - h // 2) * (t / seconds))
            frame[h // 4 : 3 * h // 4, x : x + h // 2] = (255, 220, 40)
            if noise:
                grain = rng.integers(-noise, noise + 1, frame.shape)
                frame = np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = round(start * fps) + i
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
