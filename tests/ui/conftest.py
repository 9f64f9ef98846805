"""For the tests of what people use: a server with a key and CORS, a headless Chromium, and
`rillet chat` in a real terminal."""
from __future__ import annotations

import io
import os
import re
import shutil
import sys

import pexpect
import pytest

from tests.conftest import RunningServer

API_KEY = "sk-ui-test"
# Chromium on a machine without network, as the browser tests need it: nothing fetched, nothing synced.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,860")
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


@pytest.fixture(scope="session")
def keyed_cors_server(server):
    """Needs a key; lets pages of the shared server's origin call it from a browser."""
    running = RunningServer(["--api-key", API_KEY, "--cors-origin", server.base_url,
                             "--cors-origin", "http://allowed.test", "--kv-cache-tokens", "2048"])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        message = "chromium and chromedriver are not installed (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # Both paths given: Selenium Manager never runs (it would try to download a driver).
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def spawn_chat(*args: str, tmp_path, env: dict[str, str] | None = None,
               python_code: str | None = None) -> pexpect.spawn:
    """`rillet chat ARGS` in a terminal of its own (a pty of 40 rows and 120 columns)."""
    env = {**os.environ, "TERM": "xterm-256color", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
           "PROMPT_TOOLKIT_NO_CPR": "1", "RILLET_API_KEY": "", "PYTHONUNBUFFERED": "1", **(env or {})}
    command = ["-c", python_code] if python_code else ["-m", "rillet"]
    child = pexpect.spawn(sys.executable, [*command, "chat", *args], env=env, cwd=str(tmp_path),
                          dimensions=(40, 120), encoding="utf-8", codec_errors="replace", timeout=120)
    child.logfile_read = io.StringIO()
    return child


def screen(child: pexpect.spawn) -> str:
    """Everything the chat has written to its terminal, without the control sequences."""
    return ESCAPES.sub("", child.logfile_read.getvalue())
