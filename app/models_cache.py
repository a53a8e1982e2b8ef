"""Cached model loading and evaluation tables shared by every page and session."""

from __future__ import annotations

import json
import os
from typing import Any

import streamlit as st
import torch

import models
from models.core import DynamicModel, eval_table_path
from models.evaluate import sha256

# Half the cores for the models: the browser draws the page on the others. With torch's default
# (every core) and the browser busy, OpenMP's threads wait on each other: on a 2-core machine
# with one other busy process, the early-exit network's median batch-1 run took 350 ms on 2
# threads and 8 ms on 1, and a page's latency figures measured the contention, not the model.
INFERENCE_THREADS = max(1, (os.cpu_count() or 2) // 2)


def use_inference_threads() -> None:
    """Set torch's intra-op threads for this app process (process-wide, the same for every session)."""
    if torch.get_num_threads() != INFERENCE_THREADS:
        torch.set_num_threads(INFERENCE_THREADS)


@st.cache_resource(show_spinner="Loading model...")
def load_model(name: str) -> DynamicModel:
    """The committed weights in eval mode, shared by every session (knobs are arguments).
    Warmed up with one dynamic and one static run, so the first latency a page measures does
    not include oneDNN's one-time kernel set-up."""
    model = models.get(name)
    x = torch.zeros(1, 3, model.input_size, model.input_size)
    model.trace(x)
    model.trace(x, **model.static_knobs)
    return model


@st.cache_resource(show_spinner=False)
def eval_table(name: str) -> dict[str, Any] | None:
    """``assets/eval/<name>.json`` as written by ``python -m models.evaluate --write``.

    A resource, not data: the table is read-only and large enough that ``cache_data``'s copy
    on every rerun would cost more than the page's own work.
    """
    path = eval_table_path(name)
    return json.loads(path.read_text()) if path.exists() else None


@st.cache_resource(show_spinner=False)
def loaded_weights_sha256(name: str) -> str:
    """The sha256 of the weights file the model was loaded from: read once per process, as the
    model is, and not taken from its card (a weights file replaced without its card would pass)."""
    return sha256(load_model(name).card.weights)


def table_matches_weights(name: str) -> bool:
    """Whether the eval table was measured on the weights the app has loaded."""
    table = eval_table(name)
    return table is not None and table.get("weights_sha256") == loaded_weights_sha256(name)
