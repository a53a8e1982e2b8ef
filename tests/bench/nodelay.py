"""``python -m tests.bench.nodelay app/main.py [streamlit options]``: ``streamlit run`` with
TCP_NODELAY on the listening socket (Linux passes it on to every accepted connection), for the
benchmark's headless session only: why, in :mod:`tests.bench.session`. The app is unchanged."""

from __future__ import annotations

import socket
import sys

from streamlit.web import cli
from streamlit.web.server.starlette import starlette_server

_bind = starlette_server._bind_socket  # Streamlit 1.67's; a version without it stops here


def bind_without_nagle(address: str, port: int, backlog: int) -> socket.socket:
    """Streamlit's listening socket, with TCP_NODELAY set (and checked)."""
    sock = _bind(address, port, backlog)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
        raise RuntimeError("TCP_NODELAY did not take on Streamlit's listening socket")
    return sock


if __name__ == "__main__":
    starlette_server._bind_socket = bind_without_nagle
    sys.argv = ["streamlit", "run", *sys.argv[1:]]
    cli.main()
