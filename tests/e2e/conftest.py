"""Browser tests: headless Debian Chromium driven by Playwright against a real ``streamlit run`` server and a
real ``rmstudio worker``.

Chromium comes from the Debian package (``apt-get install -y chromium``), never from ``playwright install``.
Without it (or without the playwright package) the tests skip with the reason, unless
``RMSTUDIO_REQUIRE_BROWSER=1`` (CI), where they fail. Screenshots go to ``test-artifacts/e2e/`` (gitignored).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
CHROMIUM = os.environ.get("RMSTUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"the playwright package is missing ({exc})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test here ``e2e``; skip them (or fail under RMSTUDIO_REQUIRE_BROWSER=1) without a browser."""
    here = Path(__file__).parent
    reason = _browser_missing()
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.e2e)
            if reason and not os.environ.get("RMSTUDIO_REQUIRE_BROWSER"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per test module.

    Module scope, not session: Playwright's sync API keeps its event loop "running" while the context is open,
    and any later test that opens its own ``sync_playwright()`` (tests/integration/test_faults.py) would fail."""
    reason = _browser_missing()
    if reason:
        pytest.fail(f"RMSTUDIO_REQUIRE_BROWSER is set but {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    """Wait until ``url`` answers 200, failing with the server log if the process dies or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@dataclass
class Proc:
    """A background process with its log file."""

    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start(cmd: list[str], env: dict[str, str], log: Path) -> Proc:
    """Start ``cmd`` in the repository root with ``env``, output to ``log``."""
    fh = open(log, "wb")  # noqa: SIM115 - the child process writes to it until it is stopped
    return Proc(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT), log)


def app_env(home: Path) -> dict[str, str]:
    """Environment for the server and worker: this test's home and database, one torch thread, no token."""
    env = {k: v for k, v in os.environ.items() if k != "RMSTUDIO_RESEARCHER_TOKEN"}
    env.update(RMSTUDIO_HOME=str(home), RMSTUDIO_DB=f"sqlite:///{home / 'rmstudio.db'}", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    return env


def streamlit_server(home: Path, env: dict[str, str]) -> tuple[Proc, str]:
    """``streamlit run app/main.py --server.headless true`` on a free port; returns it and its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    proc = start(cmd, env, home / "streamlit.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/_stcore/health", 60, proc.proc, proc.log)
    return proc, url


def worker(home: Path, env: dict[str, str]) -> Proc:
    """A real ``rmstudio worker`` polling every half second."""
    exe = shutil.which("rmstudio", path=str(Path(sys.executable).parent)) or shutil.which("rmstudio")
    cmd = [exe, "worker", "--poll-interval", "0.5"] if exe else [sys.executable, "-m", "cli", "worker",
                                                                  "--poll-interval", "0.5"]
    return start(cmd, env, home / "worker.log")


def shot(page: object, name: str) -> Path:
    """A full-page screenshot under test-artifacts/e2e/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def wait_idle(page: object, timeout: float = 20.0) -> None:
    """Wait until the app's script run is over (no "running" status widget for 0.4 s), so widgets are current."""
    end, quiet = time.monotonic() + timeout, None
    while time.monotonic() < end:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:  # type: ignore[attr-defined]
            quiet = quiet or time.monotonic()
            if time.monotonic() - quiet > 0.4:
                return
        else:
            quiet = None
        time.sleep(0.05)
    raise AssertionError("the app kept running")


@contextmanager
def served_app(browser: object, home: Path, env: dict[str, str]) -> Iterator[tuple[object, str]]:
    """A ``streamlit run`` server for ``home``/``env`` and a fresh browser context: ``(context, url)``; prints the
    server's log when the block fails, and stops both."""
    server, url = streamlit_server(home, env)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)  # type: ignore
    try:
        yield ctx, url
    except BaseException:
        print("streamlit log:", server.log.read_text()[-3000:])
        raise
    finally:
        ctx.close()
        server.stop()
