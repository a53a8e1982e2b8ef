"""``make bench``: performance figures for the early-exit view, printed as JSON and written to
``artifacts/bench.json``. Benchmarks report numbers; the tests assert behaviour.

- threshold change, server side: one AppTest rerun after a slider move (median ms);
- slider release to updated figure in Chromium (median ms);
- cold start: ``streamlit run`` to the first rendered early-exit figure (s);
- model latency per threshold at batch size 1 on test images, and the ratio to the full
  network at the <= 50 %-FLOPs operating point from the eval table (needs ``$DYNN_CIFAR10``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import models
from models.core import EVAL_DIR
from models.data import load_split, resolve_source, to_tensor
from tests.support import ROOT, chromium_browser, serve_app, threshold_slider, wait_idle

OUT = ROOT / "artifacts" / "bench.json"


def server_side_threshold_ms(moves: int = 20) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()
    at.switch_page("views/early_exits.py").run()
    slider = next(s for s in at.slider if s.label == "Confidence threshold")
    times = []
    for value in np.round(np.linspace(0.5, 0.99, moves), 2):
        start = time.perf_counter()
        slider.set_value(float(value)).run()
        times.append((time.perf_counter() - start) * 1e3)
        slider = next(s for s in at.slider if s.label == "Confidence threshold")
    return {"median_ms": statistics.median(times), "max_ms": max(times), "moves": moves}


def browser_figures(moves: int = 15) -> dict:
    """Cold start, then slider release (a key press) to the updated confidence figure."""
    start = time.perf_counter()
    with serve_app() as url, chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{url}/early_exits")
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        wait_idle(page)
        cold = time.perf_counter() - start
        # the same server, a second page: what a user who reloads sees
        thumb = threshold_slider(page)
        thumb.focus()
        times = []
        for _ in range(moves):
            value = float(thumb.input_value())
            target = f"threshold {value - 0.01:.2f}"
            t0 = time.perf_counter()
            page.keyboard.press("ArrowLeft")
            page.wait_for_function(
                "(t) => [...document.querySelectorAll('.js-plotly-plot text')].some(e => e.textContent === t)",
                arg=target, timeout=30_000,
            )  # fmt: skip
            times.append((time.perf_counter() - t0) * 1e3)
            wait_idle(page)
    return {"cold_start_s": cold, "slider_to_figure_median_ms": statistics.median(times), "moves": moves}


def model_latency(n: int = 500) -> dict:
    """Mean batch-1 latency of the real dynamic path on test images, per threshold."""
    if resolve_source() is None:
        return {"skipped": "set DYNN_CIFAR10 for the latency figures"}
    torch.set_grad_enabled(False)
    model = models.get("early_exit")
    table = json.loads((EVAL_DIR / "early_exit.json").read_text())
    half = table["summary"]["best_at_half_flops"]
    split = load_split("test").head(n)
    x = to_tensor(split.images, model.mean, model.std)
    for i in range(20):  # warm-up
        model.trace(x[i : i + 1], threshold=0.5)
    thresholds = sorted({0.5, 0.8, 0.9, 0.95, 0.99, half["threshold"], table["default_knobs"]["threshold"], 1.0})
    # interleaved (every threshold on an image before the next image) so that drift in the
    # machine's speed hits every threshold alike
    traces: dict[float, list] = {t: [] for t in thresholds}
    for i in range(n):
        for t in thresholds:
            traces[t].append(model.trace(x[i : i + 1], threshold=t))
    rows = [
        {
            "threshold": t,
            "mean_latency_ms": float(np.mean([tr.latency_ms for tr in runs])),
            "mean_mflops": float(np.mean([tr.mflops for tr in runs])),
            "accuracy": float(np.mean([tr.prediction == y for tr, y in zip(runs, split.labels, strict=True)])),
        }
        for t, runs in traces.items()
    ]
    full = next(r for r in rows if r["threshold"] == 1.0)
    at_half = next(r for r in rows if r["threshold"] == half["threshold"])
    return {
        "images": n,
        "threads": torch.get_num_threads(),
        "per_threshold": rows,
        "half_flops_threshold": half["threshold"],
        "latency_ratio_at_half_flops": at_half["mean_latency_ms"] / full["mean_latency_ms"],
    }


def main() -> None:
    results = {
        "model_latency": model_latency(),
        "server_side_threshold_change": server_side_threshold_ms(),
        "browser": browser_figures(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {Path(OUT).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
