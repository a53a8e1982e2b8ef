"""Every ``st.session_state`` key the app uses, named once, and what keeps each page's settings."""

import functools
from collections.abc import Callable
from typing import Any, ParamSpec

import streamlit as st

P = ParamSpec("P")

INPUT = "input"  # the selected InputImage, or None
INPUT_ERROR = "input_error"  # the message of the last refused upload
SOURCE = "source"  # sidebar radio: upload / test image / example
UPLOAD = "upload"
# Streamlit empties a file uploader that a run does not draw (the sidebar draws it only while
# the source is Upload): the last good upload is kept here, (name, bytes), to come back to
KEPT_UPLOAD = "kept_upload"
UPLOAD_DRAWN = "upload_drawn"  # whether the last run drew the uploader
KEPT_UPLOAD_SHOWN = "kept_upload_shown"  # whether the empty uploader stands for the kept upload
TEST_INDEX = "test_index"
EXAMPLE = "example"


def knob_key(model: str, knob: str) -> str:
    """Widget key of one knob of one model (each page keeps its own settings: :func:`keep_settings`)."""
    return f"knob:{model}:{knob}"


COMPARE_COUNT = "compare:count"  # how many configurations the Compare page shows
COMPARE_BUDGET = "compare:budget"  # the mean-MFLOPs budget slider
COMPARE_BUDGET_VALUE = "compare_budget_value"  # the budget the user chose: no widget's, so kept as it is
COMPARE_MATCHED = "compare:matched"  # per configuration, what matching the budget did


def compare_key(i: int, what: str) -> str:
    """Widget key of configuration ``i`` of the Compare page: its ``model`` or ``model:knob``."""
    return f"compare:{i}:{what}"


VIDEO_UPLOAD = "video:upload"
VIDEO_SAMPLE = "video:sample"  # use the sample clip while no video is uploaded
VIDEO_SPREAD = "video:spread"  # sample across the whole video, not from its start at a rate
VIDEO_FPS = "video:fps"
VIDEO_MAX_FRAMES = "video:max_frames"
VIDEO_MODEL = "video:model"
VIDEO_REUSE = "video:reuse"
VIDEO_FRAME = "video:frame"  # the scrubber
VIDEO_DECODED = "video:decoded"  # (key, Video): the last decoded upload, one per session
VIDEO_RESULTS = "video:results"  # (key, frame thumbnails, traces by frame): the last model and knobs, one per session
VIDEO_KEPT_UPLOAD = "video_kept_upload"  # (name, bytes): the last good video upload, as KEPT_UPLOAD
VIDEO_KEPT_SHOWN = "video_kept_shown"  # whether the empty video uploader stands for the kept upload
PAGE, PREVIOUS_PAGE = "page", "previous_page"  # the page of this full run and of the one before


def video_knob_key(model: str, knob: str) -> str:
    return f"video:{model}:{knob}"


def video_settings_drawn(model: str) -> tuple[str, ...]:
    """The Video page's keys (and key prefixes) whose widgets a run draws above the frame
    scrubber when ``model`` is chosen: :func:`keep_settings` must skip them in the scrubber's
    fragment, and only them (another model's knobs are not drawn and must be kept)."""
    return (VIDEO_SAMPLE, VIDEO_SPREAD, VIDEO_FPS, VIDEO_MAX_FRAMES, VIDEO_MODEL, VIDEO_REUSE,
            video_knob_key(model, ""))  # fmt: skip


ATTRIBUTION_MODEL = "attribution:model"  # which model the attribution panel explains
ATTRIBUTION_SLOW = "attribution:slow"  # the (model, image, knobs) whose slow attributions were asked for


# kept between pages: the model pages' knobs and toggles, the Compare configurations (count,
# models, knobs), the Video page's settings, the sidebar's test image and example photo (while
# another source is chosen) and the model the attribution panel explains; all have fixed ranges
# and are drawn with their current value (components.render.current_value). Not the Compare
# budget slider (its range follows the chosen models: the page keeps the value itself, in
# COMPARE_BUDGET_VALUE), the video scrubber (its range follows the video), the uploads
# (Streamlit does not let a file uploader's value be set: the last good image and video are
# kept apart, KEPT_UPLOAD and VIDEO_KEPT_UPLOAD) or the decoded frames and results.
KEPT = ("knob:", "compare:", "video:")
KEPT_KEYS = (TEST_INDEX, EXAMPLE, ATTRIBUTION_MODEL)
NOT_KEPT = (COMPARE_BUDGET, COMPARE_MATCHED, VIDEO_UPLOAD, VIDEO_FRAME, VIDEO_DECODED, VIDEO_RESULTS)


def keep_settings(also: tuple[str, ...] = KEPT_KEYS, skip: tuple[str, ...] = ()) -> None:
    """Keep the model pages' knobs while the user visits other pages. Streamlit forgets a
    widget's value when a run does not draw the widget; assigning the value to its key again,
    as Streamlit's documentation advises, keeps it for the user's return. Only keys whose
    widgets take no default once set (``render_knobs``) and whose ranges never change: a kept
    value outside a range that depends on the data (the video's frame scrubber, the Compare
    budget) would stop the page. Run before the page on every run, and at the start of every
    fragment (:func:`knob_fragment`): a fragment's rerun drops the other widgets' values too.
    ``also``: single keys kept besides the prefixes; a fragment passes none, as their widgets
    (the sidebar's, the attribution model's) were drawn earlier in the same run, where their
    values may no longer be assigned, and a fragment's rerun does not touch widgets outside it.
    ``skip``: keys or key prefixes not to assign: settings drawn earlier in the same run,
    above a fragment (the Video page's, :func:`video_settings_drawn`)."""
    for key in list(st.session_state):
        if not isinstance(key, str) or key in NOT_KEPT or key.startswith(skip):
            continue
        if key.startswith(KEPT) or key in also:
            st.session_state[key] = st.session_state[key]


def knob_fragment(run: Callable[P, None]) -> Callable[P, None]:
    """``st.fragment`` for a page's knobs and what they change (it reruns alone when they
    move), keeping the other pages' knobs (:func:`keep_settings`) through its reruns."""

    @functools.wraps(run)
    def kept(*args: P.args, **kwargs: P.kwargs) -> None:
        keep_settings(also=())
        run(*args, **kwargs)

    return st.fragment(kept)


def kept_upload(file: Any, kept_key: str, shown_key: str, *, came_back: bool, note: str) -> tuple[str, bytes] | None:
    """An uploader's file as (name, bytes), kept under ``kept_key`` for when Streamlit empties
    the uploader (a run that did not draw it); ``came_back``: this run is the first to draw it
    again. Then the kept upload stands in, ``note`` under the empty uploader says so, and
    ``shown_key`` remembers it for the reruns after. None, and the kept upload forgotten, when
    nothing was uploaded or the user removed the upload. A caller that refuses the file pops
    ``kept_key``, so that a bad upload does not come back."""
    kept = st.session_state.get(kept_key)
    if file is not None:
        upload, st.session_state[shown_key] = (file.name, file.getvalue()), False
    elif kept is not None and (came_back or st.session_state.get(shown_key)):
        upload, st.session_state[shown_key] = kept, True
        st.caption(f"Still using **{kept[0]}**, {note}")
    else:  # nothing uploaded, or the user removed the upload
        st.session_state.pop(kept_key, None)
        return None
    st.session_state[kept_key] = upload
    return upload
