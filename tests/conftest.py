"""Starts the real server once per test session, on a free port, and hands out clients for it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import openai
import pytest

MODEL_NAME = "SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="rillet-server-", suffix=".log", delete=False)
        # API keys come only from the test's own settings, never from the caller's environment.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RILLET_API_KEYS": "", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rillet", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready(timeout=180)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()[-5000:]

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.base_url}/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.unlink(self.log.name)


@pytest.fixture(scope="session")
def server():
    # Small KV pool and prefill chunk, so the tests also exercise chunking and the pool's limits.
    running = RunningServer(["--kv-cache-tokens", "8192", "--max-num-batched-tokens", "256"])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="test", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c
