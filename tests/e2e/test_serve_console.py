"""``rmstudio serve`` as a newcomer runs it (``make demo``): the demo data, every page opened in a real browser,
labels by key, the automatic retrain and its rescore. The console shows one line per event and no traceback, and
Streamlit runs without its source file watcher (which logs a traceback for every lazily imported module that
cannot load, e.g. transformers' optional torchvision imports)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.e2e.conftest import app_env, free_port, start, wait_http, wait_idle

PAGES = ("", "train", "dashboard", "inspect", "data")


def _rmstudio() -> list[str]:
    exe = shutil.which("rmstudio", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "cli"]


def _wait_for(log: Path, text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in the console within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _streamlit_cmdline(serve_pid: int) -> list[str]:
    for child in psutil.Process(serve_pid).children():
        cmd = child.cmdline()
        if "streamlit" in " ".join(cmd):
            return cmd
    raise AssertionError("rmstudio serve started no Streamlit process")


def test_demo_console_is_quiet(browser, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = app_env(home)
    subprocess.run([*_rmstudio(), "seed-demo"], env=env, check=True, capture_output=True, timeout=120)
    port = free_port()
    serve = start([*_rmstudio(), "serve", "--port", str(port), "--address", "127.0.0.1"], env, tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/_stcore/health", 90, serve.proc, serve.log)
        cmd = _streamlit_cmdline(serve.proc.pid)
        assert cmd[cmd.index("--server.fileWatcherType") + 1] == "none"
        assert cmd[cmd.index("--server.runOnSave") + 1] == "false"

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        wait_idle(page, 60)
        for key in "1212":  # four verdicts by keyboard
            page.keyboard.press(key)
            wait_idle(page, 30)
        for path in PAGES[1:]:
            page.goto(f"{url}/{path}")
            wait_idle(page, 90)
        page.close()
        # the demo's AI labels make the worker retrain on its own, then rescore the stored responses
        _wait_for(serve.log, "(train) claimed", 120)
        _wait_for(serve.log, "version_id=", 300)
        _wait_for(serve.log, "(rescore) claimed", 60)
    finally:
        if serve.proc.poll() is None:
            serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(30)
    console = serve.log.read_text(errors="replace")
    assert serve.proc.returncode == 0, console[-3000:]
    assert "Traceback" not in console, console[-5000:]
    assert "ModuleNotFoundError" not in console, console[-5000:]
    assert "Loading weights" not in console  # no progress bar per model load in the worker's log
    assert "started (lease" in console and "stopped by signal" in console
