"""Video: any model frame by frame on an uploaded clip, with timelines of what it decided and a
knob that reuses the last result while the picture barely changes (temporal redundancy)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

from app import state
from app.inputs import example_array
from app.models_cache import load_model, use_inference_threads
from components.figures import make_video_timeline
from components.images import square_thumbnail, to_model_input
from components.pictures import decision_of, mechanism_picture
from components.render import current_index, current_value, render_knobs
from components.video import EXTENSIONS, FrameResult, Video, VideoError, make_sample_clip, read_frames, run_frames
from models import available, model_class

MAP_SIDE = 192
SAMPLING = ("from the start", "across the whole video")
SAMPLING_HELP = (
    "From the start: frames at a fixed rate until the maximum is reached. Across the whole video: the maximum number "
    "of frames, evenly spaced from start to end; the reader seeks past the frames in between instead of decoding them."
)
SAMPLE_NAME = "sample clip"
SAMPLE_HELP = (
    "6 seconds made from two of the example photos: each held still for a second, then slowly zoomed into, then a "
    "cut. The still seconds are frames the reuse knob can skip; the zooms change every frame."
)
REUSE_HELP = (
    "Reuse the last computed frame's result while this frame's model input (the 32x32 thumbnail) differs from "
    "it by less than this mean absolute pixel change (0 to 1). 0 runs the model on every frame."
)


@st.cache_resource(show_spinner=False)
def sample_clip() -> bytes:
    """The sample clip (:func:`components.video.make_sample_clip`), made once per process from
    the sidebar's example photos of a cat and a coffee cup: the page works with no video at all."""
    return make_sample_clip([example_array("chelsea"), example_array("coffee")])


def decoded(data: bytes, fps: float, max_frames: int, spread: bool) -> Video:
    """The sampled frames of an upload, kept for the last upload and sampling only (bounded
    memory); decoded with a progress bar. Raises VideoError."""
    key = (hashlib.sha256(data).hexdigest(), None if spread else fps, max_frames, spread)
    cached = st.session_state.get(state.VIDEO_DECODED)
    if cached is not None and cached[0] == key:
        return cached[1]
    st.session_state[state.VIDEO_DECODED] = None  # free the previous video first
    bar = st.progress(0.0, text="Decoding the video...")
    try:
        video = read_frames(
            data, fps=fps, max_frames=max_frames, spread=spread, progress=lambda f: bar.progress(f, "Decoding...")
        )
    finally:
        bar.empty()
    st.session_state[state.VIDEO_DECODED] = (key, video)
    return video


def frame_results(video: Video, video_key: tuple, name: str, knobs: dict[str, Any], reuse: float) -> list[FrameResult]:
    """The model on every sampled frame, or the reused result. Each frame's trace is kept for
    the last model and knobs (bounded memory), so that moving the reuse knob runs the model
    only on frames no earlier setting ran it on."""
    key = (video_key, name, tuple(sorted(knobs.items())))
    cached = st.session_state.get(state.VIDEO_RESULTS)
    model = load_model(name)
    if cached is None or cached[0] != key:
        st.session_state[state.VIDEO_RESULTS] = None  # free the previous setting's first
        thumbs = [np.asarray(square_thumbnail(f.image, model.input_size)) for f in video.frames]
        cached = (key, thumbs, {})
        st.session_state[state.VIDEO_RESULTS] = cached
    _, thumbs, traces = cached
    bar = None

    def infer(i: int):
        nonlocal bar
        if i not in traces:
            if bar is None:  # only when the model runs
                bar = st.progress(0.0, text=f"Running {model.title} on the frames...")
            x = to_model_input(video.frames[i].image, size=model.input_size, mean=model.mean, std=model.std)
            traces[i] = model.trace(x, **knobs)
            bar.progress((i + 1) / len(thumbs))
        return traces[i]

    use_inference_threads()
    try:
        with torch.inference_mode():
            return run_frames(thumbs, infer, reuse_below=reuse)
    finally:
        if bar is not None:
            bar.empty()


def render_summary(video: Video, results: list[FrameResult], name: str) -> None:
    model = load_model(name)
    computed = [r for r in results if not r.reused]
    spent = sum(r.flops for r in results) / 1e6
    static = len(results) * model.full_flops / 1e6
    a, b, c, d = st.columns(4)
    a.metric(
        "Frames sampled",
        len(results),
        f"{video.width}x{video.height} {video.codec}",
        delta_color="off",
        delta_arrow="off",
    )
    b.metric(
        "Model runs",
        len(computed),
        f"{len(results) - len(computed)} frames reused",
        delta_color="off",
        delta_arrow="off",
    )
    c.metric("MFLOPs spent", f"{spent:,.0f}", f"{100 * spent / static:.0f}% of static on every frame",
             delta_color="off", delta_arrow="off")  # fmt: skip
    latency = np.mean([r.trace.latency_ms for r in computed])
    d.metric("Mean latency per run", f"{latency:.1f} ms", "batch 1, one run each", delta_color="off", delta_arrow="off")


def render_frame(video: Video, results: list[FrameResult], index: int, name: str) -> None:
    """The scrubbed frame, what the model decided on it, and its picture."""
    model = load_model(name)
    classes = model.card.classes
    frame, result = video.frames[index], results[index]
    trace = result.trace
    image = square_thumbnail(frame.image, MAP_SIDE)
    picture = mechanism_picture(trace, image, classes)
    # a map sits beside the frame; a network diagram (exit strip, block path) needs the page's
    # width, and in a third of it its units ran into each other
    drawn = isinstance(picture, Image.Image)
    left, middle, *right = st.columns([1, 1.2, 1.6] if drawn else [1, 2.8], gap="large")
    left.image(frame.image, caption=f"frame at {frame.time_s:.2f} s", width="stretch")
    with middle:
        status = "reused the last computed frame's result" if result.reused else "model ran"
        change = "" if result.change is None else f", change {result.change:.3f}"
        st.metric("Prediction", classes[trace.prediction], f"{100 * trace.confidence:.1f}% probability",
                  delta_color="off", delta_arrow="off")  # fmt: skip
        st.metric(
            "Compute", f"{result.flops / 1e6:.1f} MFLOPs", f"{status}{change}", delta_color="off", delta_arrow="off"
        )
        st.caption(decision_of(trace).text)
    if drawn:
        right[0].image(picture, width=MAP_SIDE, caption=f"{model.title}: what it computed")
    else:
        st.plotly_chart(picture, key="video_picture")


@st.fragment
def render_scrubbed(video: Video, results: list[FrameResult], name: str) -> None:
    """The frame scrubber, the timelines with the scrubbed frame marked, and that frame: a
    scrub reruns only this, not the upload's hashing, the settings and the summary above.
    Like a model page's knob fragment (``state.knob_fragment``), it keeps the other pages'
    settings and the other models' Video knobs through its reruns; not the settings drawn
    above it, which Streamlit keeps and which this run may no longer assign."""
    state.keep_settings(also=(), skip=state.video_settings_drawn(name))
    times = [f.time_s for f in video.frames]
    labels = [f"{t:.2f} s" for t in times]
    if len(set(labels)) < len(labels):  # frames under 10 ms apart: Streamlit maps a repeated label to its last frame
        labels = [f"frame {i + 1}, {t:.3f} s" for i, t in enumerate(times)]
    index = (
        st.select_slider("Frame", options=range(len(results)), value=0, key=state.VIDEO_FRAME,
                         format_func=labels.__getitem__, help="The sampled frames, by their time in the video.")
        if len(results) > 1 else 0
    )  # fmt: skip
    classes = load_model(name).card.classes
    decisions = [decision_of(r.trace) for r in results]
    st.plotly_chart(
        make_video_timeline(
            times, [r.trace.mflops for r in results], [r.reused for r in results],
            [d.value for d in decisions], decisions[0].label, [classes[r.trace.prediction] for r in results],
            [r.trace.confidence for r in results], current=index,
        ),
        key="video_timeline",
    )  # fmt: skip
    st.caption("Grey crosses at 0 MFLOPs: frames that reused the last computed result and spent no network FLOPs.")
    render_frame(video, results, index, name)


def render_video() -> None:
    st.sidebar.caption("This page runs on the video uploaded on it, or on its sample clip; the image input above is "
                       "for the other pages.")  # fmt: skip
    st.title("Video")
    st.caption("Any model, frame by frame: what it decided over time, and the compute a video's redundancy can save.")
    file = st.file_uploader("Video", type=list(EXTENSIONS), key=state.VIDEO_UPLOAD,
                            help="mp4, webm, mov, mkv, avi or an animated gif; decoded with PyAV (FFmpeg).")  # fmt: skip
    came_back = st.session_state.get(state.PREVIOUS_PAGE) != st.session_state.get(state.PAGE)  # a visit
    upload = state.kept_upload(file, state.VIDEO_KEPT_UPLOAD, state.VIDEO_KEPT_SHOWN, came_back=came_back,
                               note="uploaded before you visited another page. Upload a video to replace it.")  # fmt: skip
    kept = current_value  # the page's settings are kept between pages (app.state.keep_settings)
    sample = st.toggle("No video at hand? Use the sample clip", kept(state.VIDEO_SAMPLE, False), key=state.VIDEO_SAMPLE,
                       help=SAMPLE_HELP, disabled=upload is not None)  # fmt: skip
    sampling = current_index(state.VIDEO_SPREAD, SAMPLING, SAMPLING[0])
    spread = st.radio("Sample", SAMPLING, index=sampling, horizontal=True, key=state.VIDEO_SPREAD,
                      help=SAMPLING_HELP) == SAMPLING[1]  # fmt: skip
    a, b = st.columns(2)
    fps = a.slider("Frames per second to sample", 0.5, 10.0, kept(state.VIDEO_FPS, 2.0), step=0.5, key=state.VIDEO_FPS,
                   disabled=spread, help="Not used when sampling across the whole video.")  # fmt: skip
    max_frames = b.slider("Maximum frames", 5, 300, kept(state.VIDEO_MAX_FRAMES, 60), step=5, key=state.VIDEO_MAX_FRAMES,
                          help="From the start: a longer video is sampled up to this many frames. Across the whole "
                          "video: this many frames, evenly spaced.")  # fmt: skip
    if upload is None and not sample:
        for key in (state.VIDEO_DECODED, state.VIDEO_RESULTS):  # up to 300 frames: not kept for nothing
            st.session_state.pop(key, None)
        st.info("Upload a video to run a model on its frames, or use the sample clip.")
        return
    clip, data = upload if upload is not None else (SAMPLE_NAME, sample_clip())
    try:
        video = decoded(data, fps, max_frames, spread)
    except VideoError as err:
        for key in (state.VIDEO_RESULTS, state.VIDEO_KEPT_UPLOAD):
            st.session_state.pop(key, None)
        st.error(f"{clip}: {err}")
        return
    length = f"{video.duration_s:.1f} s" if video.duration_s else "unknown length"
    frames = video.frames
    how = f"at up to {fps:g} per second from the start"
    if video.spread:
        gap = (frames[-1].time_s - frames[0].time_s) / (len(frames) - 1) if len(frames) > 1 else None
        how = "across the whole video" if gap is None else f"one every {gap:.2f} s across the whole video"
    count = f"{len(frames)} frame{'s' * (len(frames) != 1)}"
    st.caption(f"{clip}: {video.width}x{video.height}, {video.codec}, {length}; {count} "
               f"sampled {how} ({video.decoded} decoded to find them).")  # fmt: skip
    for note in video.notes:
        st.warning(note)
    names = available()
    controls, reuse_col = st.columns([2, 1], gap="large")
    with controls:
        default = names.index("early_exit") if "early_exit" in names else 0
        name = st.selectbox(
            "Model", names, index=current_index(state.VIDEO_MODEL, names, names[default]), key=state.VIDEO_MODEL,
            format_func=lambda n: model_class(n).title,
        )  # fmt: skip
        model = load_model(name)
        defaults = {k.key: model.default_knob(k) for k in model.knobs}
        knobs = render_knobs(model.knobs, defaults, key_of=lambda key: state.video_knob_key(name, key))
    with reuse_col:
        reuse = st.slider("Reuse below this change", 0.0, 0.2, kept(state.VIDEO_REUSE, 0.0), step=0.005,
                          key=state.VIDEO_REUSE, help=REUSE_HELP, format="%.3f")  # fmt: skip
    results = frame_results(video, st.session_state[state.VIDEO_DECODED][0], name, knobs, reuse)
    render_summary(video, results, name)
    render_scrubbed(video, results, name)


render_video()
