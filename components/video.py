"""Videos: sample frames with PyAV (``torchvision.io`` no longer decodes video), run a model per
frame, and reuse a result while the picture barely changes.

Pure (no Streamlit): bytes in, sampled frames out; frames and an inference function in, one
result per frame out. Memory stays bounded: frames are decoded one at a time, only the sampled
ones are kept, each scaled down by FFmpeg before it becomes an image, and decoding stops at
``max_frames``. Frames can be sampled from the start at a rate, or spread over the whole video;
where the next sample is more than ``SEEK_GAP`` seconds ahead, the reader seeks to the keyframe
before it instead of decoding every frame in between.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from models.core import Trace

MAX_SIDE = 320  # pixels: the longest side a sampled frame is kept at
MAX_PIXELS = 8192 * 8192  # a frame larger than this is refused before decoding
EXTENSIONS = ("mp4", "webm", "mov", "gif", "mkv", "avi", "m4v")
SEEK_GAP = 2.0  # seconds: a sample further ahead than this is reached by seeking, not by decoding
SEEK_BACK = 0.5  # seconds: seek this far before the sample, so that B-frames shown before a keyframe decode
MAX_DECODED_PIXELS = 20_000_000_000  # decoding stops after this many pixels: above what a 25 MB upload
# decodes to when sampled whole (5 minutes of 1080p at 30 fps, 80 s of 4K), but only 300 frames of a
# GIF's 8192x8192 canvas (a 69 KB GIF can ask for thousands: 91 s and 1.1 GB before this bound)


class VideoError(ValueError):
    """A video that cannot be used, with a message for the user."""


@dataclass(frozen=True)
class Frame:
    time_s: float  # seconds from the video's first frame (a file cut from a stream may start at 10 s: 0 here)
    image: Image.Image  # RGB, longest side at most MAX_SIDE


@dataclass(frozen=True)
class Video:
    frames: tuple[Frame, ...]
    width: int  # the video's own size, as a player shows it (after the display rotation)
    height: int
    codec: str
    duration_s: float | None  # None when the container does not say
    notes: tuple[str, ...] = ()
    decoded: int = 0  # frames FFmpeg decoded to sample these (seeking skips the rest)
    spread: bool = False  # sampled over the whole video, not from its start at a rate


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The video's length in seconds, or None (also for a length that is not positive and
    finite). The stream's own duration where it has one; the container's otherwise, less its
    start time where that is inside it (Matroska gives the last timestamp: a 12 s clip that
    starts at 10 s says 22 s)."""
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        start = container.start_time or 0
        seconds = (container.duration - start if 0 < start < container.duration else container.duration) / av.time_base
    return seconds if seconds is not None and 0 < seconds < math.inf else None  # a damaged header may say -5 s


def _origin(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's first timestamp in seconds (sample times count from it), or None."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


QUARTER_TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


def quarter_turns(rotation: float) -> int | None:
    """Counter-clockwise quarter turns (0-3) for a display rotation in degrees; None for an
    angle that is not a multiple of 90 (not applied)."""
    turns = rotation / 90
    return round(turns) % 4 if abs(turns - round(turns)) < 0.01 else None


def upright(image: Image.Image, turns: int | None) -> Image.Image:
    """The frame as a player shows it. A file stores frames as the camera sensor read them and
    a display matrix saying how to turn them; a phone's portrait clip is landscape frames with
    a rotation of -90 degrees (FFmpeg's convention: counter-clockwise, as ``PIL`` turns)."""
    return image.transpose(QUARTER_TURNS[turns]) if turns else image


def _scaled(width: int, height: int) -> tuple[int, int]:
    """The frame size to keep: the longest side at most MAX_SIDE, even sides (for FFmpeg's scaler)."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def read_frames(
    data: bytes,
    *,
    fps: float,
    max_frames: int,
    spread: bool = False,
    progress: Callable[[float], None] | None = None,
) -> Video:
    """Decode ``data`` and keep one frame every ``1 / fps`` seconds from the start, at most
    ``max_frames``; or, with ``spread``, ``max_frames`` frames evenly over the whole video.

    Args:
        data: the uploaded file.
        fps: frames to keep per second of video (not used with ``spread``).
        max_frames: stop after this many kept frames (a long video is sampled, not read whole).
        spread: sample the whole video: one frame at the start of each of ``max_frames`` equal
            spans. A video whose length the container does not give is sampled from the
            start, with a note.
        progress: called with the share done in [0, 1] while decoding.

    Raises:
        VideoError: an empty file, one FFmpeg cannot read, no video stream, frames too large,
            or no frame decoded.
    """
    if not data:
        raise VideoError("The file is empty.")
    if fps <= 0 or max_frames < 1:
        raise VideoError("Frames per second and the maximum number of frames must be positive.")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as err:  # FFmpeg's demuxers fail in many ways on foreign data; none may reach the page
        raise VideoError(f"This is not a video FFmpeg can read ({err.__class__.__name__}).") from err
    with container:
        if not container.streams.video:
            raise VideoError("The file has no video stream.")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # the container opened, but FFmpeg has no decoder for its codec
            raise VideoError("FFmpeg cannot decode this video's codec.")
        stream.thread_type = "AUTO"
        # the header's size is not a promise: FFmpeg refuses any later frame above the bound too,
        # before it allocates it
        stream.codec_context.options = {"max_pixels": str(MAX_PIXELS)}
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > MAX_PIXELS:
            raise VideoError(too_large(width, height))
        duration = _duration(container, stream)
        notes: list[str] = []
        frame_s = 1 / float(stream.average_rate) if stream.average_rate else 0.0
        if duration is not None and duration < frame_s:
            duration = None  # shorter than one frame: a damaged header, not a length
        if spread and not duration:
            spread = False
            notes.append(
                f"The file does not give its length: frames were sampled from the start at {fps:g} per second."
            )
        times = sample_times(duration, max_frames) if spread and duration else None
        frames, decoded, reached, turns, stopped = _sample(
            container, stream, fps, max_frames, times, duration, progress, notes
        )
    if turns in (1, 3):
        width, height = height, width  # a quarter turn: the size a player shows
    if not frames:
        raise VideoError("No frame could be decoded from this video." + (f" {notes[0]}" if notes else ""))
    if not spread and len(frames) == max_frames and duration and frames[-1].time_s + 1 / fps < duration:
        notes.append(
            f"Only the first {frames[-1].time_s:.1f} s of {duration:.1f} s were sampled ({max_frames} frames); "
            "sample across the whole video to see all of it."
        )
    if spread and duration and len(frames) < max_frames and not stopped:
        notes.append(
            f"The video ended at {reached:.1f} s of the {duration:.1f} s its header gives: "
            f"{len(frames)} of {max_frames} frames sampled."
            if reached < duration - 1.5 * max(duration / max_frames, frame_s)
            else f"The video has too few frames for {max_frames} evenly spaced samples: {len(frames)} sampled."
        )
    return Video(tuple(frames), width, height, stream.codec_context.name, duration, tuple(notes), decoded, spread)


def sample_times(duration: float, count: int) -> list[float]:
    """``count`` times spread over ``[0, duration)``: the start of each of ``count`` equal spans."""
    return [duration * i / count for i in range(count)]


def next_sample_time(t: float, fps: float) -> float:
    """The first point of the ``1 / fps`` grid after a frame kept at ``t``: a clip that starts
    late or pauses keeps its grid instead of sampling the next frame again."""
    return (math.floor(t * fps + 1e-6) + 1) / fps


def too_large(width: int, height: int) -> str:
    return f"Frames of {width}x{height} pixels are too large (at most {MAX_PIXELS:,} pixels)."


def _sample(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    fps: float,
    max_frames: int,
    times: list[float] | None,
    duration: float | None,
    progress: Callable[[float], None] | None,
    notes: list[str],
) -> tuple[list[Frame], int, float, int | None, bool]:
    """The kept frames, the frames decoded, the time decoding reached, the quarter turns
    applied to the first kept frame, and whether decoding stopped before the video's end for a
    reason already noted (damage, the decoding budget); notes for the user are appended to
    ``notes``. ``times``:
    the sample times (spread over the video), or None for a ``1 / fps`` grid from the start.
    Times count from the stream's first timestamp.

    A sample more than ``SEEK_GAP`` ahead of the last decoded frame is reached by seeking to the
    keyframe before ``SEEK_BACK`` seconds ahead of it (FFmpeg decodes from there). A seek that
    lands no further than where decoding already was (keyframes further apart than the gap)
    turns seeking off for the rest of the file, so a file with sparse keyframes costs at most
    one wasted stretch."""
    frames: list[Frame] = []
    decoded, first_turns, now, origin = 0, None, -math.inf, _origin(stream)
    rate = float(stream.average_rate) if stream.average_rate else None
    seek = stream.time_base is not None  # a seek target is given in the stream's time base
    pending = iter(times or ())
    upcoming = next(pending, None)

    def target() -> float | None:
        """The next sample time; with ``times``, the first one after the last kept frame."""
        nonlocal upcoming
        if times is None:
            return next_sample_time(frames[-1].time_s, fps) if frames else 0.0
        while frames and upcoming is not None and upcoming <= frames[-1].time_s + 1e-6:
            upcoming = next(pending, None)
        return upcoming

    sought_for = None  # the sample time of the last seek: one seek per sample at most
    damaged, pixels = [0], 0
    try:
        while len(frames) < max_frames:
            landing = sought_for is not None
            for frame in _decoded(container, stream, damaged):
                pixels += frame.width * frame.height
                if pixels > MAX_DECODED_PIXELS:
                    notes.append(
                        f"Decoding stopped after {decoded} frames, at {now:.1f} s: frames of {frame.width}x"
                        f"{frame.height} pixels add up to more than the {MAX_DECODED_PIXELS / 1e9:.0f} gigapixels "
                        "this app decodes from one video."
                    )
                    return frames, decoded, now, first_turns, True
                if frame.time is not None and origin is None:
                    origin = frame.time
                t = frame.time - origin if frame.time is not None else decoded / (rate or fps)
                seek = seek and frame.time is not None  # a counted time is wrong after a seek
                decoded += 1
                if landing and t <= now:  # keyframes further apart than SEEK_GAP: decode straight on
                    seek = False
                landing, now = False, max(now, t)
                wanted = target()
                if wanted is None:
                    break
                if seek and wanted - t > SEEK_GAP and wanted != sought_for:
                    at = origin + wanted - SEEK_BACK
                    container.seek(round(at / stream.time_base), stream=stream, backward=True, any_frame=False)
                    sought_for = wanted
                    break
                if t + 1e-6 < wanted:
                    continue
                frames.append(_kept(frame, t, frames, notes))
                if len(frames) == 1:
                    first_turns = quarter_turns(frame.rotation) if frame.rotation else None
                if progress is not None:
                    progress(min(1.0, max(0.0, t / duration)) if duration else len(frames) / max_frames)
                if len(frames) >= max_frames:
                    break
            else:
                break  # the end of the stream
            if target() is None:
                break  # every sample time is taken
    except VideoError:
        raise
    except av.error.ArgumentError as err:  # FFmpeg refuses a frame above max_pixels this way (or a malformed one)
        raise VideoError(
            f"FFmpeg refused a frame: larger than {MAX_PIXELS:,} pixels, or malformed ({err.__class__.__name__})."
        ) from err
    except Exception as err:  # damaged packets: keep what decoded so far
        notes.append(f"Decoding stopped after {decoded} frames: the data is damaged ({err.__class__.__name__}).")
        return frames, decoded, now, first_turns, True
    finally:
        if damaged[0]:
            one = damaged[0] == 1
            notes.append(
                f"{damaged[0]} damaged packet{'' if one else 's'} could not be decoded and "
                f"{'was' if one else 'were'} skipped: {'its' if one else 'their'} frames are missing."
            )
    return frames, decoded, now, first_turns, False


def _decoded(container: av.container.InputContainer, stream: av.video.stream.VideoStream, damaged: list[int]):
    """``container.decode(stream)``, except that a packet FFmpeg finds invalid is skipped and
    counted in ``damaged[0]`` instead of ending the video (a damaged start need not lose the rest)."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            damaged[0] += 1
            continue
        yield from frames


def _kept(frame: av.VideoFrame, t: float, frames: list[Frame], notes: list[str]) -> Frame:
    """A sampled frame as an upright RGB image, scaled down by FFmpeg; the first one notes the
    display rotation it was turned by."""
    if frame.width * frame.height > MAX_PIXELS:
        raise VideoError(too_large(frame.width, frame.height))
    size = _scaled(frame.width, frame.height)
    rotation = frame.rotation
    turns = quarter_turns(rotation)
    if not frames and rotation:
        notes.append(
            f"Frames turned as a player shows them: the file asks for a display rotation of {rotation:+.0f} "
            "degrees (phones store portrait clips this way)."
            if turns is not None
            else f"The file asks for a display rotation of {rotation:+.0f} degrees; only quarter turns are applied."
        )
    try:
        image = frame.to_image(width=size[0], height=size[1]).convert("RGB")
    except Exception as err:  # FFmpeg's scaler has no conversion from some raw pixel formats
        raise VideoError(
            f"FFmpeg cannot convert this video's pixel format ({frame.format.name}) to RGB ({err.__class__.__name__})."
        ) from err
    return Frame(float(t), upright(image, turns))


def frame_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two equally sized uint8 images, in [0, 1]."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() / 255)


@dataclass(frozen=True)
class FrameResult:
    trace: Trace  # the frame's own, or the reused one
    reused: bool  # the model did not run: the previous computed frame's result stands
    change: float | None  # difference to the last computed frame (None for the first)

    @property
    def flops(self) -> int:
        """FLOPs spent on this frame (the change test itself is not a network's FLOPs)."""
        return 0 if self.reused else self.trace.flops


def run_frames(
    thumbnails: Sequence[np.ndarray],
    infer: Callable[[int], Trace],
    *,
    reuse_below: float = 0.0,
    progress: Callable[[float], None] | None = None,
) -> list[FrameResult]:
    """Run ``infer(i)`` on every frame, unless the frame differs from the last frame the model
    ran on by less than ``reuse_below`` (mean absolute pixel change of the model's input
    ``thumbnails``): then that frame's result is reused (temporal redundancy; 0 never reuses).
    """
    results: list[FrameResult] = []
    anchor: np.ndarray | None = None
    for i, thumb in enumerate(thumbnails):
        change = None if anchor is None else frame_change(thumb, anchor)
        if change is not None and change < reuse_below:
            results.append(FrameResult(results[-1].trace, True, change))
        else:
            results.append(FrameResult(infer(i), False, change))
            anchor = thumb
        if progress is not None:
            progress((i + 1) / len(thumbnails))
    return results


def make_sample_clip(
    photos: Sequence[np.ndarray], *, size: tuple[int, int] = (320, 240), fps: int = 10, still_s: float = 1.0,
    zoom_s: float = 2.0, zoom: float = 0.5,
) -> bytes:  # fmt: skip
    """A clip made from still photos, to try the Video page without a video of one's own: each
    photo, cropped to the clip's shape, is held still for ``still_s`` seconds (frames the reuse
    knob can skip), then zoomed into its centre over ``zoom_s`` seconds down to ``zoom`` of its
    width (every frame changes), then the clip cuts to the next photo. Encoded like a phone's
    upload would be (MPEG-4 part 2 in an mp4, with PyAV), and read back through the same
    :func:`read_frames`."""
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000  # enough that a held photo stays sharp and still
        index = 0
        for photo in photos:
            image = Image.fromarray(photo).convert("RGB")
            w, h = image.size
            scale = min(w / width, h / height)  # the largest box of the clip's shape inside the photo
            cx, cy, bw, bh = w / 2, h / 2, width * scale, height * scale
            still, moving = round(still_s * fps), round(zoom_s * fps)
            for i in range(still + moving):
                f = 1.0 - (1.0 - zoom) * max(0, i - still + 1) / moving  # 1 while still, down to ``zoom``
                box = (cx - f * bw / 2, cy - f * bh / 2, cx + f * bw / 2, cy + f * bh / 2)
                frame = av.VideoFrame.from_image(image.resize(size, Image.Resampling.BILINEAR, box=box))
                frame.pts = index
                index += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
