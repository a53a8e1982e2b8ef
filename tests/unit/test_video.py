"""Video sampling with PyAV and the temporal-reuse loop, on clips the tests encode themselves."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from components import video as video_module
from components.video import MAX_SIDE, FrameResult, VideoError, frame_change, read_frames, run_frames
from models.core import Trace
from tests.support import make_video


def test_frames_are_sampled_at_the_requested_rate():
    video = read_frames(make_video(seconds=2.0, fps=10), fps=2.0, max_frames=100)
    assert [f.time_s for f in video.frames] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert (video.width, video.height, video.codec) == (96, 64, "mpeg4")
    assert video.duration_s == pytest.approx(2.0, abs=0.15)
    assert video.notes == ()
    assert all(f.image.mode == "RGB" and f.image.size == (96, 64) for f in video.frames)


def test_a_long_video_is_sampled_up_to_max_frames_with_a_note():
    seen = []
    video = read_frames(make_video(seconds=4.0, fps=10), fps=5.0, max_frames=6, progress=seen.append)
    assert len(video.frames) == 6 and video.frames[-1].time_s == pytest.approx(1.0)
    assert "Only the first" in video.notes[0]
    assert seen == sorted(seen) and 0 < seen[-1] <= 1


def test_large_frames_are_scaled_down_as_they_are_decoded():
    video = read_frames(make_video(seconds=0.5, fps=4, size=(640, 360)), fps=4.0, max_frames=2)
    assert max(video.frames[0].image.size) == MAX_SIDE and (video.width, video.height) == (640, 360)


@pytest.mark.parametrize("fmt", ["gif", "webm", "mov"])
def test_animated_gif_webm_and_mov_decode(fmt):
    video = read_frames(make_video(seconds=1.0, fps=10, fmt=fmt), fps=4.0, max_frames=10)
    assert len(video.frames) == 4


def audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is plainly not a video" * 10, "not a video"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "not a video|No frame"),
        (audio_only(), "no video stream"),
    ],
    ids=["empty", "text", "mp4-header-only", "audio-only"],
)
def test_unusable_files_raise_a_message(data, message):
    with pytest.raises(VideoError, match=message):
        read_frames(data, fps=2.0, max_frames=10)


def test_a_truncated_video_keeps_what_decoded_or_says_why():
    data = make_video(seconds=3.0, fps=10)
    try:
        video = read_frames(data[: len(data) // 2], fps=5.0, max_frames=50)
    except VideoError as err:
        assert str(err)
    else:
        assert 0 < len(video.frames) < 15


def fake_trace(flops: int) -> Trace:
    return Trace("fake", {}, np.array([1.0]), (), flops, 100, 1.0)


def test_reuse_skips_frames_that_barely_changed_and_spends_nothing_on_them():
    still = np.zeros((4, 4, 3), np.uint8)
    moved = np.full((4, 4, 3), 60, np.uint8)
    thumbs = [still, still, moved, moved, still]
    calls = []

    def infer(i):
        calls.append(i)
        return fake_trace(10 + i)

    results = run_frames(thumbs, infer, reuse_below=0.05)
    assert calls == [0, 2, 4]
    assert [r.reused for r in results] == [False, True, False, True, False]
    assert [r.flops for r in results] == [10, 0, 12, 0, 14]
    assert results[1].trace is results[0].trace and results[1].change == 0.0
    assert results[2].change == pytest.approx(60 / 255)


def test_reuse_compares_with_the_last_computed_frame_so_slow_drift_still_runs():
    thumbs = [np.full((2, 2, 3), 10 * i, np.uint8) for i in range(6)]  # 10 levels a frame
    results = run_frames(thumbs, lambda i: fake_trace(i), reuse_below=25 / 255)
    assert [r.reused for r in results] == [False, True, True, False, True, True]


def test_reuse_off_runs_every_frame():
    thumbs = [np.zeros((2, 2, 3), np.uint8)] * 3
    assert not any(r.reused for r in run_frames(thumbs, lambda i: fake_trace(1), reuse_below=0.0))
    assert frame_change(thumbs[0], thumbs[1]) == 0.0
    assert isinstance(run_frames(thumbs, lambda i: fake_trace(1))[0], FrameResult)


@pytest.mark.parametrize(
    ("decisions", "dtick"),
    [([5, 5, 4, 6], 1), ([6, 3, 0, 12], 2), ([12.5, 40.0, 33.1, 0.0], None)],
)
def test_the_decision_timeline_ticks_whole_counts_only(decisions, dtick):
    from components.figures import make_video_timeline

    n = len(decisions)
    fig = make_video_timeline(
        [0.5 * i for i in range(n)], [100.0] * n, [False] * n, decisions, "exit that fired", ["cat"] * n, [0.9] * n
    )
    assert fig.layout.yaxis2.dtick == dtick


def test_the_timeline_rows_share_one_time_axis_where_make_subplots_puts_them():
    """The timeline is built in one go (fast, rebuilt on every scrub), laid out as plotly's
    ``make_subplots`` lays out three rows on a shared x axis; the scrubbed frame is marked in
    every row."""
    from plotly.subplots import make_subplots

    from components.figures import make_video_timeline

    titles = ("MFLOPs spent", "exit that fired", "prediction (marker size: confidence)")
    ref = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=titles).to_dict()
    times = [0.0, 0.5, 1.0]
    frames = ([90.0, 0.0, 60.0], [False, True, False], [3, 3, 5], titles[1], ["cat", "cat", "dog"], [0.9, 0.9, 0.6])
    fig = make_video_timeline(times, *frames, current=2).to_dict()["layout"]
    for name in ("xaxis", "yaxis", "xaxis2", "yaxis2", "xaxis3", "yaxis3"):
        assert {k: fig[name][k] for k in ref["layout"][name]} == ref["layout"][name], name
    assert fig["xaxis3"]["title"]["text"] == "time in the video (s)"
    placed = [(a["text"], a["y"]) for a in ref["layout"]["annotations"]]
    assert [(a["text"], a["y"]) for a in fig["annotations"]] == placed
    marks = [("x", "y domain", 1.0), ("x2", "y2 domain", 1.0), ("x3", "y3 domain", 1.0)]
    assert sorted((s["xref"], s["yref"], s["x0"]) for s in fig["shapes"]) == marks


def encode_frames(fmt: str, codec: str, pix_fmt: str, frames: list[av.VideoFrame]) -> bytes:
    """``frames`` encoded with ``codec`` (into ``pix_fmt``) in a ``fmt`` container, 10 per second."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, pix_fmt
        for i, frame in enumerate(frames):
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def test_a_codec_ffmpeg_cannot_decode_gets_a_message_not_a_crash():
    black = [av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24") for _ in range(3)]
    data = encode_frames("avi", "mpeg4", "yuv420p", black)
    assert b"FMP4" in data
    with pytest.raises(VideoError, match="cannot decode this video's codec"):
        read_frames(data.replace(b"FMP4", b"ZZZZ"), fps=2.0, max_frames=10)


def test_a_frame_larger_than_the_header_said_is_refused(monkeypatch):
    """Frames of an image stream may each have their own size: the bound holds for every one."""
    from PIL import Image

    import components.video

    monkeypatch.setattr(components.video, "MAX_PIXELS", 100 * 100)
    jpegs = b""
    for side in (64, 200):
        out = io.BytesIO()
        Image.new("RGB", (side, side), (200, 100, 50)).save(out, format="JPEG")
        jpegs += out.getvalue()
    with pytest.raises(VideoError, match=r"larger than|too large"):
        read_frames(jpegs, fps=100.0, max_frames=10)


def test_sampling_keeps_its_grid_after_a_late_start_or_a_pause():
    from components.video import next_sample_time

    assert next_sample_time(0.0, 2.0) == 0.5 and next_sample_time(0.5, 2.0) == 1.0
    assert next_sample_time(3.0, 2.0) == 3.5  # a clip starting at 3 s: 3.1 is not sampled next
    assert next_sample_time(3.1, 2.0) == 3.5 and next_sample_time(0.3, 5.0) == pytest.approx(0.4)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_frames_are_turned_as_the_display_rotation_asks(rotation):
    plain = read_frames(make_video(seconds=0.5, fps=4), fps=4.0, max_frames=1)
    video = read_frames(make_video(seconds=0.5, fps=4, rotation=rotation), fps=4.0, max_frames=1)
    stored = np.asarray(plain.frames[0].image).astype(int)
    shown = np.asarray(video.frames[0].image).astype(int)
    np.testing.assert_array_equal(shown, np.rot90(stored, k=rotation // 90))  # numpy turns counter-clockwise too
    assert (video.width, video.height) == ((96, 64) if rotation == 180 else (64, 96))
    assert "display rotation of" in video.notes[0] and not any("rotation" in n for n in plain.notes)


def test_a_phone_portrait_clip_stands_upright():
    """A phone stores a portrait clip as landscape frames and -90 degrees: the sensor's left
    edge (the gradient's dark end here) is the top of the picture a player shows."""
    shown = np.asarray(read_frames(make_video(seconds=0.5, fps=4, rotation=-90), fps=4.0, max_frames=1).frames[0].image)
    assert shown.shape[:2] == (96, 64)
    assert shown[0].mean() + 50 < shown[-1].mean()


def linear_frames(data: bytes) -> list:
    """Every frame, decoding from the start."""
    return list(read_frames(data, fps=1000.0, max_frames=10_000).frames)


def as_sampled_linearly(video, data: bytes, times: list[float]) -> bool:
    """Whether ``video``'s frames are the ones decoding every frame from the start finds at
    ``times``: for each, the first frame at or after it."""
    every = linear_frames(data)
    expected = [next(f for f in every if f.time_s + 1e-6 >= t) for t in times]
    return [f.time_s for f in video.frames] == pytest.approx([f.time_s for f in expected]) and all(
        np.array_equal(np.asarray(f.image), np.asarray(e.image)) for f, e in zip(video.frames, expected, strict=True)
    )


def test_spread_sampling_covers_the_whole_video_and_seeks_past_what_it_skips():
    data = make_video(seconds=30.0, fps=10, gop=10)  # a keyframe every second, 300 frames
    video = read_frames(data, fps=2.0, max_frames=6, spread=True)
    assert video.spread and not video.notes
    assert as_sampled_linearly(video, data, [0, 5, 10, 15, 20, 25])
    assert video.decoded <= 6 * 16  # each sample: from a keyframe up to 1.5 s before it, not all 300 frames
    start = read_frames(data, fps=2.0, max_frames=6)
    assert [f.time_s for f in start.frames] == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5])
    assert "whole video" in start.notes[0]


def test_spread_sampling_with_b_frames_keeps_the_frame_at_each_sample_time():
    """With B-frames a keyframe can be shown after frames stored before it: a seek straight to
    the sample time would land on a keyframe shown after it and keep a later frame."""
    data = make_video(seconds=30.0, fps=25, gop=25, bframes=2)
    video = read_frames(data, fps=2.0, max_frames=6, spread=True)
    assert as_sampled_linearly(video, data, [0, 5, 10, 15, 20, 25])


@pytest.mark.parametrize("fmt", ["mp4", "mkv", "webm"])
def test_a_video_that_starts_late_is_sampled_over_its_own_length(fmt):
    """A file cut from a stream keeps the stream's timestamps: here the first frame is at 10 s.
    Times count from the first frame; spread samples cover the 12 s, not the first half second."""
    data = make_video(seconds=12.0, fps=10, gop=10, fmt=fmt, start=10.0)
    video = read_frames(data, fps=2.0, max_frames=6, spread=True)
    assert video.duration_s == pytest.approx(12.0, abs=0.2) and not video.notes
    assert as_sampled_linearly(video, data, [0, 2, 4, 6, 8, 10])
    start = read_frames(data, fps=2.0, max_frames=4)
    assert [f.time_s for f in start.frames] == pytest.approx([0, 0.5, 1, 1.5])
    assert "first 1.5 s of 12.0 s" in start.notes[0]


def test_spread_sampling_says_when_the_video_ends_before_its_header_says():
    data = make_video(seconds=30.0, fps=10, gop=10, fmt="mkv")  # its length is in the header, before the frames
    whole = read_frames(data, fps=2.0, max_frames=6, spread=True)
    cut = read_frames(data[: len(data) // 3], fps=2.0, max_frames=6, spread=True)
    assert len(cut.frames) < 6 and any("ended at" in n and "of the 30.0 s its header gives" in n for n in cut.notes)
    assert not whole.notes


def test_spread_sampling_of_a_clip_with_fewer_frames_than_asked_keeps_each_once():
    data = make_video(seconds=1.0, fps=10)
    video = read_frames(data, fps=2.0, max_frames=60, spread=True)
    assert [f.time_s for f in video.frames] == pytest.approx([i / 10 for i in range(10)])
    assert "too few frames for 60 evenly spaced samples: 10 sampled" in video.notes[0]


def test_spread_sampling_without_near_keyframes_decodes_straight_on():
    """One keyframe for the whole clip: a seek would land back at the start every time; after
    one wasted seek the reader decodes straight on, and still keeps the right frames."""
    data = make_video(seconds=12.0, fps=10, gop=1000)
    video = read_frames(data, fps=2.0, max_frames=4, spread=True)
    assert as_sampled_linearly(video, data, [0, 3, 6, 9])
    assert video.decoded <= 120 + 31  # every frame once, plus at most the stretch before the wasted seek


def test_spread_sampling_of_a_video_of_unknown_length_samples_from_the_start(monkeypatch):
    monkeypatch.setattr(video_module, "_duration", lambda container, stream: None)
    video = read_frames(make_video(seconds=3.0, fps=10), fps=2.0, max_frames=3, spread=True)
    assert [f.time_s for f in video.frames] == pytest.approx([0, 0.5, 1.0])
    assert not video.spread and "does not give its length" in video.notes[0]


def with_damaged_start(data: bytes, length: int = 6000) -> bytes:
    """The first ``length`` bytes of an MP4's media data overwritten (a damaged download or disk)."""
    start = data.find(b"mdat") + 4
    return data[:start] + bytes((i * 37 + 11) % 256 for i in range(length)) + data[start + length :]


def test_packets_ffmpeg_cannot_decode_are_skipped_and_counted_not_the_end_of_the_video():
    data = with_damaged_start(make_video(seconds=3.0, fps=10, noise=20, gop=10))
    video = read_frames(data, fps=10.0, max_frames=60)
    assert len(video.frames) >= 20  # most of the 30 frames survive the damage at the start
    assert any("damaged packets could not be decoded and were skipped" in n for n in video.notes)
    assert not read_frames(make_video(seconds=3.0, fps=10, noise=20, gop=10), fps=10.0, max_frames=60).notes


def with_matroska_duration(data: bytes, seconds: float) -> bytes:
    """A Matroska file whose header length (the Duration element, in milliseconds) is replaced."""
    import struct

    at = data.find(b"\x44\x89")  # the Duration element's ID
    size = data[at + 2] & 0x7F  # a one-byte size: 4 or 8 (a float)
    value = struct.pack(">d" if size == 8 else ">f", seconds * 1000)
    return data[: at + 3] + value + data[at + 3 + size :]


@pytest.mark.parametrize("seconds", [-5.0, 0.0, 1e-6])
def test_a_header_length_that_is_negative_or_shorter_than_a_frame_counts_as_unknown(seconds):
    data = with_matroska_duration(make_video(seconds=3.0, fps=10, fmt="mkv"), seconds)
    shares: list[float] = []
    video = read_frames(data, fps=2.0, max_frames=6, spread=True, progress=shares.append)
    assert video.duration_s is None and not video.spread and len(video.frames) == 6
    assert "does not give its length" in video.notes[0]
    assert shares and all(0.0 <= s <= 1.0 for s in shares)  # Streamlit's progress bar refuses anything else


@pytest.mark.parametrize("spread", [False, True])
def test_decoding_stops_at_a_budget_of_decoded_pixels_with_a_note(monkeypatch, spread):
    """A tiny GIF can ask for thousands of frames on a huge canvas; decoding stops at a budget."""
    monkeypatch.setattr(video_module, "MAX_DECODED_PIXELS", 96 * 64 * 12)
    video = read_frames(make_video(seconds=3.0, fps=10), fps=10.0, max_frames=30, spread=spread)
    assert video.decoded == 12 and len(video.frames) <= 12
    assert len(video.notes) == 1 and "Decoding stopped after 12 frames" in video.notes[0]


def test_a_pixel_format_ffmpeg_cannot_convert_gets_a_message():
    data = encode_frames("nut", "rawvideo", "bgr4", [av.VideoFrame(16, 16, "bgr4") for _ in range(3)])
    with pytest.raises(VideoError, match=r"cannot convert this video's pixel format \(bgr4\)"):
        read_frames(data, fps=2.0, max_frames=3)


def test_the_sample_clip_holds_each_photo_still_then_zooms_then_cuts():
    """Two photos of other shapes than the clip's (portrait, wide): 3 s each at 10 fps. The held
    second barely changes (the reuse knob's frames), every zoom frame changes, the cut most."""
    rng = np.random.default_rng(0)
    blocks = np.ones((4, 4, 1), np.uint8)  # noise in 4x4-pixel blocks: 300x200 and 120x400 pixels
    photos = [np.kron(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), blocks) for h, w in ((75, 50), (30, 100))]
    video = read_frames(video_module.make_sample_clip(photos), fps=10, max_frames=100)
    assert (video.width, video.height, video.codec, len(video.frames)) == (320, 240, "mpeg4", 60)
    thumbs = [np.asarray(f.image.resize((32, 32))) for f in video.frames]
    changes = [frame_change(a, b) for a, b in zip(thumbs[1:], thumbs, strict=False)]  # change into frame i + 1
    for start in (0, 30):  # each photo: 10 still frames, 20 zooming, then the cut
        assert max(changes[start : start + 9]) < 0.005
        assert min(changes[start + 9 : start + 29]) > 0.005
    assert changes[29] > max(changes[:29] + changes[30:])
