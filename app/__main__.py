"""``python -m app [streamlit options]``: the app as ``make run`` starts it.

The same as ``streamlit run app/main.py [options]``, plus one thing: Streamlit imports nothing
of the app until a browser connects, and then the app's first run spent most of its time
importing torch (about 3 s on a 2-core CPU) while the browser waited. Here a background thread
starts the app's imports as soon as the server is up, so that they overlap the browser opening
and loading the page. The first run then finds them in ``sys.modules``, or waits on Python's
import lock for the one still in progress: the same modules, imported once.

Why not at once: the imports are Python work, and so is Streamlit starting its server; under
the interpreter's lock the two take turns, and started together they delayed the server (and
with it the browser) by about a second. Back to back on the 2-core CPU, to the first rendered
early-exit figure: ``streamlit run`` 13.1 s (median of 3), imports started at once 12.3 s,
started once the server is up 11.8 s.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")
# What every page's first run imports (the sidebar, the model cache, the page helpers) and the
# figures of the model pages; torch, plotly, PIL and the models come with them.
PREWARM = ("app.inputs", "app.models_cache", "app.common", "components.figures")
POLL_S = 0.02


def server_started() -> bool:
    """Whether Streamlit's runtime has started (it then takes browser connections)."""
    from streamlit import runtime
    from streamlit.runtime import RuntimeState

    return runtime.exists() and runtime.get_instance().state not in (RuntimeState.INITIAL, RuntimeState.STOPPED)


def prewarm(names: tuple[str, ...] = PREWARM) -> None:
    """Once the server is up, import ``names`` in turn. A failure stops here silently: the
    app's run imports the same module and shows the error in the page, where the user sees it."""
    while not server_started():
        time.sleep(POLL_S)  # a daemon thread: a server that never starts ends it with the process
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            return


def main(argv: list[str]) -> None:
    from streamlit.web import cli

    threading.Thread(target=prewarm, name="dynn-prewarm", daemon=True).start()
    sys.argv = ["streamlit", "run", str(MAIN), *argv]
    cli.main(prog_name="streamlit")  # its help then reads "Usage: streamlit run ...", which this is


if __name__ == "__main__":
    main(sys.argv[1:])
