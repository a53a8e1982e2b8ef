"""Every ``st.session_state`` key the app uses, named once."""

INPUT = "input"  # the selected InputImage, or None
INPUT_ERROR = "input_error"  # the message of the last refused upload
SOURCE = "source"  # sidebar radio: upload / test image / example
UPLOAD = "upload"
TEST_INDEX = "test_index"
EXAMPLE = "example"


def knob_key(model: str, knob: str) -> str:
    """Widget key of one knob of one model (each page keeps its own settings)."""
    return f"knob:{model}:{knob}"


COMPARE_COUNT = "compare:count"  # how many configurations the Compare page shows
COMPARE_BUDGET = "compare:budget"  # the mean-MFLOPs budget slider
COMPARE_MATCHED = "compare:matched"  # per configuration, what matching the budget did


def compare_key(i: int, what: str) -> str:
    """Widget key of configuration ``i`` of the Compare page: its ``model`` or ``model:knob``."""
    return f"compare:{i}:{what}"


VIDEO_UPLOAD = "video:upload"
VIDEO_FPS = "video:fps"
VIDEO_MAX_FRAMES = "video:max_frames"
VIDEO_MODEL = "video:model"
VIDEO_REUSE = "video:reuse"
VIDEO_FRAME = "video:frame"  # the scrubber
VIDEO_DECODED = "video:decoded"  # (key, Video): the last decoded upload, one per session
VIDEO_RESULTS = "video:results"  # (key, results): the last per-frame run, one per session


def video_knob_key(model: str, knob: str) -> str:
    return f"video:{model}:{knob}"


ATTRIBUTION_MODEL = "attribution:model"  # which model the attribution panel explains
ATTRIBUTION_SLOW = "attribution:slow"  # the (model, image, knobs) whose slow attributions were asked for
