"""``make bench``: performance figures of the model pages, printed as JSON and written to
``artifacts/bench.json``. Benchmarks report numbers; the tests assert behaviour.

- threshold change, server side: one AppTest rerun after a slider move (median ms), on the
  early-exit page (instant re-decision) and the block-skipping page (a forward pass);
- slider release to updated figure in Chromium (median ms);
- cold start: ``streamlit run`` to the first rendered early-exit figure (s);
- model latency per threshold at batch size 1 on test images, and the ratio to the static
  network at the operating point the issue names: early exits at <= 50 % of the FLOPs, block
  skipping at its default threshold (needs ``$DYNN_CIFAR10``).
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


def server_side_threshold_ms(page: str, label: str, values: np.ndarray) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()
    at.switch_page(page).run()
    slider = next(s for s in at.slider if s.label == label)
    times = []
    for value in values:
        start = time.perf_counter()
        slider.set_value(float(value)).run()
        times.append((time.perf_counter() - start) * 1e3)
        slider = next(s for s in at.slider if s.label == label)
    return {"median_ms": statistics.median(times), "max_ms": max(times), "moves": len(values)}


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


def model_latency(name: str, thresholds: set[float], point: float, static: float, n: int = 500) -> dict:
    """Mean batch-1 latency of the real dynamic path on test images, per threshold, and the
    ratio at ``point`` to the ``static`` setting."""
    if resolve_source() is None:
        return {"skipped": "set DYNN_CIFAR10 for the latency figures"}
    torch.set_grad_enabled(False)
    model = models.get(name)
    split = load_split("test").head(n)
    x = to_tensor(split.images, model.mean, model.std)
    thresholds = sorted(thresholds | {point, static})
    for i in range(20):  # warm-up
        model.trace(x[i : i + 1], threshold=point)
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
    by_value = {r["threshold"]: r for r in rows}
    return {
        "images": n,
        "threads": torch.get_num_threads(),
        "per_threshold": rows,
        "point_threshold": point,
        "latency_ratio_at_point": by_value[point]["mean_latency_ms"] / by_value[static]["mean_latency_ms"],
    }


def early_exit_latency() -> dict:
    table = json.loads((EVAL_DIR / "early_exit.json").read_text())
    half = table["summary"]["best_at_half_flops"]["threshold"]
    default = table["default_knobs"]["threshold"]
    return model_latency("early_exit", {0.5, 0.8, 0.9, 0.95, 0.99, default}, half, 1.0)


def block_skip_latency() -> dict:
    default = json.loads((EVAL_DIR / "block_skip.json").read_text())["default_knobs"]["threshold"]
    return model_latency("block_skip", {0.25, 0.5, 0.75, 0.9}, default, 0.0)


def main() -> None:
    results = {
        "early_exit_latency": early_exit_latency(),
        "block_skip_latency": block_skip_latency(),
        "server_side_threshold_change": server_side_threshold_ms(
            "views/early_exits.py", "Confidence threshold", np.round(np.linspace(0.5, 0.99, 20), 2)
        ),
        "server_side_gate_threshold_change": server_side_threshold_ms(
            "views/block_skip.py", "Gate threshold", np.round(np.linspace(0.05, 1.0, 20), 2)
        ),
        "browser": browser_figures(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {Path(OUT).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
