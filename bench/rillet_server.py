"""`rillet serve` started for a benchmark: on a free port of 127.0.0.1, with no API keys, its log in
a temporary file, ready once `ready` says so (by default when /health answers 200)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_answers(base_url: str) -> bool:
    return httpx.get(f"{base_url}/health", timeout=2).status_code == 200


def start_rillet(flags: list[str], ready: Callable[[str], bool] = health_answers,
                 timeout: float = 300) -> tuple[subprocess.Popen, str, str]:
    """Returns the process, its base URL (http://127.0.0.1:PORT) and its log's path; raises
    RuntimeError if it exits or is not ready within timeout seconds (then it is killed)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="rillet-bench-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-m", "rillet", "serve", "--host", "127.0.0.1", "--port", str(port),
                                *flags], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "RILLET_API_KEYS": ""})
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {log.name}")
        try:
            if ready(base_url):
                return process, base_url, log.name
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server was not ready in {timeout:.0f} s; see {log.name}")
