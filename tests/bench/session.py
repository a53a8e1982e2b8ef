"""A headless Streamlit session for ``make bench``: the real server's time for a knob change,
with no browser sharing the two cores.

It speaks Streamlit's websocket protocol as the browser does: a ``rerun_script`` back message
with the page, the changed widget's value and the fragment that holds it; the server answers
with the fragment's deltas and ``script_finished``.

The server is started through :mod:`tests.bench.nodelay`. Streamlit 1.67 binds its listening
socket without naming TCP, so asyncio does not turn Nagle's algorithm off on the connections
(it does so only for sockets whose protocol is ``IPPROTO_TCP``): the server holds every small
message after the first until the client acknowledges it, and a client like this one, which
has nothing to send meanwhile, acknowledges only after Linux's 40 ms delayed-ACK timer. A
fragment that draws five lines of text took 46 ms so, and 7 ms with TCP_NODELAY. Chromium does
not wait on it: the early-exit page's rerun as DevTools timed it was the same with and without
(stop 16), so the benchmark measures the server's own work, not this client's acknowledgements.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.sync.client import ClientConnection, connect

FRAGMENT_DONE = ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY


@contextmanager
def headless_session(url: str) -> Iterator[HeadlessSession]:
    """A websocket session with the ``streamlit run`` server at ``url`` (http://...)."""
    ws_url = url.replace("http", "ws", 1) + "/_stcore/stream"
    with connect(ws_url, subprotocols=["streamlit"], max_size=None, compression=None, open_timeout=30) as ws:
        yield HeadlessSession(ws)


class HeadlessSession:
    """One session, as the browser holds it: the page it shows, and its runs."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.page = ""

    def open(self, page: str) -> list[ForwardMsg]:
        """A whole run of ``page`` (its URL path), as when the browser navigates to it."""
        self.page = page
        return self.rerun()

    def rerun(self, widgets: tuple[WidgetState, ...] = (), fragment: str = "") -> list[ForwardMsg]:
        """Send a rerun request and collect the answer up to ``script_finished``."""
        msg = BackMsg()
        msg.rerun_script.page_name = self.page
        msg.rerun_script.widget_states.widgets.extend(widgets)
        msg.rerun_script.fragment_id = fragment
        self.ws.send(msg.SerializeToString())
        answer = []
        while True:
            fm = ForwardMsg()
            fm.ParseFromString(self.ws.recv(timeout=120))
            answer.append(fm)
            if fm.WhichOneof("type") == "script_finished":
                return answer

    def move_slider(self, slider: tuple[str, str], value: float) -> tuple[float, list[ForwardMsg]]:
        """Set a slider (``(widget id, fragment id)``, :func:`find_slider`) to ``value``, as the
        browser does on its release: the milliseconds from sending the request to receiving
        ``script_finished``, and the answer. Raises if the fragment did not finish or drew an
        exception."""
        state = WidgetState(id=slider[0])
        state.double_array_value.data.append(float(value))
        start = time.perf_counter()
        answer = self.rerun((state,), fragment=slider[1])
        ms = (time.perf_counter() - start) * 1e3
        errors = [m.delta.new_element.exception.message for m in answer if element_type(m) == "exception"]
        if errors or answer[-1].script_finished != FRAGMENT_DONE:
            raise RuntimeError(f"{self.page}: the fragment did not finish cleanly at {value}: {errors}")
        return ms, answer


def element_type(msg: ForwardMsg) -> str:
    """The kind of element a forward message draws ('' when it draws none)."""
    if msg.WhichOneof("type") != "delta" or msg.delta.WhichOneof("type") != "new_element":
        return ""
    return msg.delta.new_element.WhichOneof("type") or ""


def find_slider(answer: list[ForwardMsg], label: str) -> tuple[str, str]:
    """The widget id of the slider labelled ``label`` in a run's answer, and its fragment's id."""
    for msg in answer:
        if element_type(msg) == "slider" and msg.delta.new_element.slider.label == label:
            return msg.delta.new_element.slider.id, msg.delta.fragment_id
    raise LookupError(f"no slider {label!r} in this run")
