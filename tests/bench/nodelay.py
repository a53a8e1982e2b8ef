"""``python -m tests.bench.nodelay app/main.py [streamlit options]``: ``streamlit run`` with
TCP_NODELAY on the listening socket (Linux passes it on to every accepted connection), for the
benchmark's headless session only: why, in :mod:`tests.bench.session`. The app is unchanged."""

from __future__ import annotations

import socket
import sys

from streamlit.web import cli
from streamlit.web.server.starlette import starlette_server

_bind = starlette_server._bind_socket


def bind_without_nagle(*args, **kwargs) -> socket.socket:
    sock = _bind(*args, **kwargs)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


if __name__ == "__main__":
    starlette_server._bind_socket = bind_without_nagle
    sys.argv = ["streamlit", "run", *sys.argv[1:]]
    cli.main()
