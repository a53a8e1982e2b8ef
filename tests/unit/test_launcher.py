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
from tests.support import APP, ROOT, free_port, stop


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
    monkeypatch.setattr(launcher, "server_started", lambda: True)
    launcher.prewarm(("first", "broken", "never"))  # no exception: the page's own import reports it
    assert calls == ["first", "broken"]


def test_prewarm_waits_for_the_server_before_importing(monkeypatch):
    polls = iter([False, False, True])
    calls: list[str] = []
    monkeypatch.setattr(launcher, "server_started", lambda: next(polls))
    monkeypatch.setattr(launcher, "POLL_S", 0)
    monkeypatch.setattr(launcher.importlib, "import_module", calls.append)
    launcher.prewarm(("first",))
    assert calls == ["first"] and next(polls, "done") == "done"  # three polls, then the import


def test_prewarm_waits_without_a_server():
    assert not launcher.server_started()  # no Streamlit server runs in the test process


# The real launcher in a subprocess, its prewarm wrapped to report what it imported, with no
# browser connecting: the server comes up, the thread sees it and imports the app's modules.
REPORTING_LAUNCHER = """
import sys, app.__main__ as launcher
prewarm = launcher.prewarm
def reporting():
    prewarm()
    print("prewarmed", all(name in sys.modules for name in launcher.PREWARM), flush=True)
launcher.prewarm = reporting
launcher.main(sys.argv[1:])
"""


def test_the_launcher_imports_the_app_once_its_server_is_up_before_any_browser():
    port = str(free_port())
    cmd = [sys.executable, "-c", REPORTING_LAUNCHER, "--server.headless", "true", "--server.port", port,
           "--server.address", "127.0.0.1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = threading.Timer(90, proc.kill)  # a launcher that never reports fails, not hangs
    deadline.start()
    try:
        lines = iter(proc.stdout.readline, "")
        assert next((line.strip() for line in lines if line.startswith("prewarmed")), None) == "prewarmed True"
    finally:
        deadline.cancel()
        stop(proc)


def test_prewarm_names_modules_that_exist():
    """Its failures are silent, so a renamed module would quietly end the head start."""
    for name in launcher.PREWARM:
        assert importlib.util.find_spec(name) is not None, name


def test_make_run_starts_the_launcher():
    dry = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # the recipe's last command (under .ci/run, make also prints the directories it enters and leaves)
    commands = [line for line in dry.splitlines() if not line.startswith("make")]
    assert commands[-1].endswith(f"/python -m {APP[1]}")


def test_the_launcher_passes_options_to_streamlit_run():
    out = subprocess.run([sys.executable, *APP, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage: streamlit run" in out.stdout
