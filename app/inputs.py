"""The shared sidebar input: an upload, a CIFAR-10 test image, or an offline example.

The chosen image is stored once in ``st.session_state[state.INPUT]`` as an :class:`InputImage`;
pages read it with :func:`current_input`. A refused upload leaves a message and no input, so
the next upload starts clean.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from app import state
from components.images import EXTENSIONS, InputError, load_image
from components.render import current_index, current_value
from models.data import CLASSES, ENV_VAR, Split, load_split, resolve_source

UPLOAD, TEST, EXAMPLE = "Upload", "CIFAR-10 test image", "Example photo"
EXAMPLES = {  # scikit-image ships these photos in its wheel: the app works with no data at all
    "Chelsea the cat (cat)": ("chelsea", "cat"),
    "Rocket on its pad (no CIFAR class)": ("rocket", None),
    "Coffee cup (no CIFAR class)": ("coffee", None),
    "Astronaut (no CIFAR class)": ("astronaut", None),
}


@dataclass(frozen=True)
class InputImage:
    image: Image.Image  # RGB
    key: str  # content hash: the cache key of every trace of this image
    name: str
    label: int | None  # true class index, when known
    notes: tuple[str, ...] = ()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _from_array(arr: np.ndarray, name: str, label: int | None) -> InputImage:
    return InputImage(Image.fromarray(arr).convert("RGB"), _digest(arr.tobytes()), name, label)


@st.cache_resource(show_spinner="Reading the CIFAR-10 test split...")
def test_split(source: str) -> Split:
    """The labelled test split, decoded once per process (read-only, so a resource)."""
    return load_split("test", source)


def usable_test_split() -> Split | None:
    """The test split of ``$DYNN_CIFAR10``, or None when it is unset or unreadable (the sidebar
    says why when the user picks a test image)."""
    source = resolve_source()
    if source is None or not source.exists():
        return None
    try:
        return test_split(str(source))
    except (OSError, ValueError):
        return None


@st.cache_data(max_entries=8, show_spinner=False)
def example_array(loader: str) -> np.ndarray:
    """One of scikit-image's bundled sample photos as an RGB array, read from the package's data
    folder with Pillow: the same array as ``skimage.data.<loader>()``, without importing
    scikit-image (its imports took 0.7 s of the app's first run)."""
    folder = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    (path,) = folder.glob(f"{loader}.*")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@st.cache_data(max_entries=16, show_spinner=False)
def decode_upload(digest: str, name: str, _data: bytes) -> InputImage:
    """Decode an upload once per content hash: reruns (every slider move) reuse it.
    Raises InputError, which ``st.cache_data`` does not cache."""
    loaded = load_image(_data, name)
    return InputImage(loaded.image, digest, name, None, loaded.notes)


def current_input() -> InputImage | None:
    """The image the sidebar chose on this run, or None."""
    return st.session_state.get(state.INPUT)


def _upload() -> InputImage | None:
    """The uploaded image; or, when the user comes back to Upload from another source (which
    emptied the uploader), the last good upload, said so under the empty uploader."""
    file = st.file_uploader(
        "Image", type=list(EXTENSIONS), key=state.UPLOAD,
        help="jpg, png, webp, bmp, or gif (first frame). Resized and centre-cropped to the model's input.",
    )  # fmt: skip
    came_back = not st.session_state.get(state.UPLOAD_DRAWN, False)
    st.session_state[state.UPLOAD_DRAWN] = True
    upload = state.kept_upload(file, state.KEPT_UPLOAD, state.KEPT_UPLOAD_SHOWN, came_back=came_back,
                               note="uploaded before another source was chosen. Upload an image to replace it.")  # fmt: skip
    if upload is None:
        return None
    name, data = upload
    try:
        return decode_upload(_digest(data), name, data)
    except Exception as err:
        st.session_state.pop(state.KEPT_UPLOAD, None)  # an upload that did not decode must not come back
        if not isinstance(err, InputError):
            raise
        st.session_state[state.INPUT_ERROR] = str(err)
        return None


def _test_image() -> InputImage | None:
    source = resolve_source()
    if source is None or not source.exists():
        st.info(f"Set `{ENV_VAR}` to a CIFAR-10 zip or folder (ImageFolder layout) to pick test images.")
        return None
    try:
        split = test_split(str(source))
    except (OSError, ValueError) as err:
        st.error(f"Could not read CIFAR-10 from {source}: {err}")
        return None
    last = len(split) - 1
    kept = min(int(current_value(state.TEST_INDEX, 0)), last)  # kept while another source was chosen
    st.session_state[state.TEST_INDEX] = kept
    index = st.number_input(f"Test image (0-{last})", 0, last, kept, key=state.TEST_INDEX)
    label = int(split.labels[index])
    return _from_array(split.images[index], f"test #{index}", label)


def _example() -> InputImage | None:
    names = list(EXAMPLES)
    choice = st.selectbox("Photo", names, index=current_index(state.EXAMPLE, names, names[0]), key=state.EXAMPLE)
    loader, cls = EXAMPLES[choice]
    return _from_array(example_array(loader), choice, CLASSES.index(cls) if cls else None)


def render_input_sidebar() -> None:
    """Draw the input picker in the sidebar and store the chosen image in session state."""
    st.session_state[state.INPUT_ERROR] = None
    with st.sidebar:
        st.header("Input")
        source = st.radio("Source", [UPLOAD, TEST, EXAMPLE], key=state.SOURCE, index=2, horizontal=False)
        picked = {UPLOAD: _upload, TEST: _test_image, EXAMPLE: _example}[source]()
        if source != UPLOAD:
            st.session_state[state.UPLOAD_DRAWN] = False
        st.session_state[state.INPUT] = picked
        if st.session_state[state.INPUT_ERROR]:
            st.error(st.session_state[state.INPUT_ERROR])
        if picked is not None:
            st.image(picked.image, caption=picked.name, width="stretch")
            if picked.label is not None:
                st.caption(f"True label: **{CLASSES[picked.label]}**")
            for note in picked.notes:
                st.caption(f"Note: {note}")
