"""``python -m app``, ``make run``'s command: Streamlit's own ``run`` with the app's imports
started in a background thread. The browser tests start the app this way (``tests.support.APP``),
so the first page run racing the thread's imports is covered end to end there."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading

from streamlit.web import cli

import app.__main__ as launcher
from tests.support import APP, ROOT


def test_main_runs_streamlit_on_the_app_with_the_options_and_starts_the_imports(monkeypatch):
    seen: dict = {}
    started: list[threading.Thread] = []
    monkeypatch.setattr(cli, "main", lambda **kw: seen.update(argv=list(sys.argv), **kw))
    monkeypatch.setattr(sys, "argv", ["app"])
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self))
    launcher.main(["--server.port", "8765"])
    assert seen["prog_name"] == "streamlit"
    assert seen["argv"] == ["streamlit", "run", str(ROOT / "app" / "main.py"), "--server.port", "8765"]
    assert [(t.name, t.daemon, t._target) for t in started] == [("dynn-prewarm", True, launcher.prewarm)]


def test_prewarm_imports_in_order_and_stops_quietly_at_a_failure(monkeypatch):
    calls: list[str] = []

    def fake_import(name):
        calls.append(name)
        if name == "broken":
            raise ImportError("no module named broken")

    monkeypatch.setattr(launcher.importlib, "import_module", fake_import)
    launcher.prewarm(("first", "broken", "never"))  # no exception: the page's own import reports it
    assert calls == ["first", "broken"]


def test_prewarm_names_modules_that_exist():
    """Its failures are silent, so a renamed module would quietly end the head start."""
    for name in launcher.PREWARM:
        assert importlib.util.find_spec(name) is not None, name


def test_make_run_starts_the_launcher():
    dry = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"-m {APP[1]}" in dry.splitlines()[-1]


def test_the_launcher_passes_options_to_streamlit_run():
    out = subprocess.run([sys.executable, *APP, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage: streamlit run" in out.stdout
