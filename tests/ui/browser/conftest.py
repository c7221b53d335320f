"""Fixtures of the browser test: JupyterLab on 127.0.0.1 over a copy of the notebooks, and headless Chromium
(Debian's package, never a Playwright download) driven by Playwright for Python.

Nothing here skips silently: without chromium or Playwright the test fails and says what to install, unless
``AHI_SKIP_BROWSER_TESTS=1`` opts out explicitly (then it is reported as skipped, with that reason).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[3]
OPT_OUT = "AHI_SKIP_BROWSER_TESTS"
#: Where the browser binary is looked for, first match wins (``AHI_CHROMIUM`` names another one).
CHROMIUM_NAMES = ("chromium", "chromium-browser")
#: Seconds JupyterLab may take to answer its first request (a hang guard, not a timing check).
START_GUARD = 120.0
#: Where screenshots are kept (``AHI_BROWSER_ARTIFACTS`` overrides): CI keeps this directory.
ARTIFACTS = Path(os.environ.get("AHI_BROWSER_ARTIFACTS", ROOT / "test-artifacts" / "browser"))


def _missing(what: str, fix: str) -> None:
    """Skip when the user opted out, else fail with what to install."""
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{what} ({OPT_OUT}=1)")
    pytest.fail(f"{what}: {fix}; or set {OPT_OUT}=1 to skip the browser test", pytrace=False)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium (``apt-get install -y chromium``), or ``AHI_CHROMIUM``."""
    named = os.environ.get("AHI_CHROMIUM")
    found = named if named and os.access(named, os.X_OK) else None
    found = found or next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    if found is None:
        _missing("no chromium browser found", "install it with `apt-get install -y chromium`")
    return str(found)


@pytest.fixture(scope="session")
def playwright_api() -> Any:
    """Playwright's sync API module (the ``browser`` extra: ``pip install -e '.[browser]'``)."""
    try:
        import jupyterlab  # noqa: F401
        from playwright import sync_api
    except ImportError as exc:
        _missing(f"cannot import {exc.name}", "install the browser extra with `pip install -e '.[browser]'`")
    return sync_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: its base URL, token and the directory it serves."""

    url: str
    token: str
    root: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}lab/tree/notebooks/{name}?token={self.token}&reset"


def _wait_until_up(lab: Lab, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_GUARD
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(f"{lab.url}api/status?token={lab.token}", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    pytest.fail(f"JupyterLab did not answer within {START_GUARD:g} s:\n{log.read_text()[-3000:]}", pytrace=False)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory, playwright_api: Any) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 serving a copy of ``notebooks/`` (the repository's files are never saved over),
    with ``tests/data`` beside it so the notebooks' relative paths resolve; isolated config and runtime dirs."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    (root / "tests").mkdir()
    (root / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    home = root / ".jupyter"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    env.pop("JUPYTER_TOKEN", None)
    port, token = _free_port(), secrets.token_hex(16)
    lab = Lab(f"http://127.0.0.1:{port}/", token, root)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    log = root / "jupyterlab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(lab, process, log)
        yield lab
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The directory screenshots are kept in (``ARTIFACTS``; created)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def page(
    playwright_api: Any, chromium_path: str, lab: Lab, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """A Chromium page (1400x1000); a screenshot of it is kept in ``artifacts`` when the test ends."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.set_default_timeout(60_000)
            yield tab
            tab.screenshot(path=str(artifacts / f"{request.node.name}-end.png"), full_page=True)
        finally:
            browser.close()
