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
