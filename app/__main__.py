"""``python -m app [streamlit options]``: the app as ``make run`` starts it.

The same as ``streamlit run app/main.py [options]``, plus one thing: Streamlit imports nothing
of the app until a browser connects, and then the app's first run spent most of its time
importing torch (about 3 s on a 2-core CPU) while the browser waited. Here a background thread
starts the app's imports as soon as the server starts, so they overlap the server coming up,
the browser opening and the page loading. The first run then finds them in ``sys.modules``, or
waits on Python's import lock for the one still in progress: the same modules, imported once.
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")
# What every page's first run imports (the sidebar, the model cache, the page helpers) and the
# figures of the model pages; torch, plotly, PIL and the models come with them.
PREWARM = ("app.inputs", "app.models_cache", "app.common", "components.figures")


def prewarm(names: tuple[str, ...] = PREWARM) -> None:
    """Import ``names`` in turn. A failure stops here silently: the app's run imports the same
    module and shows the error in the page, where the user sees it."""
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
