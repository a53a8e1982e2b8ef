"""Cached model loading and evaluation tables shared by every page and session."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st
import torch

import models
from models.core import EVAL_DIR, DynamicModel


@st.cache_resource(show_spinner="Loading model...")
def load_model(name: str) -> DynamicModel:
    """The committed weights in eval mode, shared by every session (knobs are arguments)."""
    torch.set_grad_enabled(False)
    return models.get(name)


@st.cache_data(max_entries=16, show_spinner=False)
def eval_table(name: str) -> dict[str, Any] | None:
    """``assets/eval/<name>.json`` as written by ``python -m models.evaluate --write``."""
    path = EVAL_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
