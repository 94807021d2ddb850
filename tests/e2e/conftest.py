"""Browser tests: the real app on loopback, driven by Playwright through Debian's chromium.

They skip, saying why, where chromium or the playwright package is missing (`.ci/run` installs both). Screenshots
and downloaded files go to tests/e2e/artifacts/ (or $GPTOSS_VIZ_ARTIFACTS); the run's summary prints the folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from serving import serve_app

ARTIFACTS = Path(os.environ.get("GPTOSS_VIZ_ARTIFACTS", Path(__file__).parent / "artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
_used_artifacts = []


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: drives the app in a real browser (chromium via Playwright)")


def pytest_terminal_summary(terminalreporter):
    if _used_artifacts:
        terminalreporter.write_line(f"browser test artifacts (screenshots, downloads): {ARTIFACTS}")


def chromium_path() -> str | None:
    for p in (os.environ.get("GPTOSS_VIZ_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _used_artifacts.append(ARTIFACTS)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run does it); "
                    "set GPTOSS_VIZ_CHROMIUM to use another build")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                   "(pip install -r requirements-test.txt)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app as `python app.py` builds it (bundled nano models, CPU, Hub off-line) on 127.0.0.1."""
    with serve_app(tmp_path_factory.mktemp("e2e-app")) as (url, cfg):
        yield {"url": url, "cfg": cfg}
