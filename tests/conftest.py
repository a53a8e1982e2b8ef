"""Shared fixtures. Data comes from ``$DYNN_CIFAR10`` and ``$DYNN_PHOTOS`` (default: the
``shared/data/photos`` folder beside the repository); tests never download anything.

With ``DYNN_REQUIRE_ALL=1`` (set by ``.ci/run``) a missing dataset or browser fails the test
instead of skipping it, so CI cannot pass while quietly testing less.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import CHROMIUM, ROOT

PHOTOS_DEFAULT = ROOT.parent / "shared" / "data" / "photos"


def unavailable(reason: str) -> None:
    if os.environ.get("DYNN_REQUIRE_ALL") == "1":
        pytest.fail(f"required by DYNN_REQUIRE_ALL=1 but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def checked_figures():
    """Every figure a test builds, directly or on an AppTest page, is checked against plotly's
    schema, and must come out as the app builds it without the checks (``components.figures.CHECK``)."""
    from components import figures

    figures.CHECK = True


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    value = os.environ.get("DYNN_CIFAR10")
    if not value or not Path(value).exists():
        unavailable("CIFAR-10 not available: set DYNN_CIFAR10 to the zip or folder")
    return Path(value)


@pytest.fixture(scope="session")
def test_split(cifar_path):
    from models.data import load_split

    return load_split("test", cifar_path)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    folder = Path(os.environ.get("DYNN_PHOTOS", PHOTOS_DEFAULT))
    files = sorted(folder.glob("*.jpg"))
    if not files:
        unavailable(f"no photos in {folder}: set DYNN_PHOTOS")
    return files


@pytest.fixture(scope="session")
def chromium() -> str:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401 - only whether it imports
    except ImportError as err:
        unavailable(f"Playwright does not import: {err}")
    return CHROMIUM


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def rgb_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
