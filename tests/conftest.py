"""Starts the real server once per test session, on a free port, and hands out clients for it."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import openai
import pytest

MODEL_NAME = "SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_processes(mark: str) -> list[int]:
    """Live processes whose environment carries RILLET_TEST_SERVER=mark (zombies have none)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"RILLET_TEST_SERVER={mark}".encode() in f.read().split(b"\0"):
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def wait_until_no_process_left(mark: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while marked_processes(mark):
        assert time.monotonic() < deadline, f"processes left behind: {marked_processes(mark)}"
        time.sleep(0.05)


class RunningServer:
    def __init__(self, args: list[str], env: dict[str, str] | None = None, new_session: bool = False) -> None:
        self.mark = uuid.uuid4().hex
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="rillet-server-", suffix=".log", delete=False)
        # API keys come only from the test's own settings, never from the caller's environment.
        # The mark finds every process of this server, its engine process included, even once orphaned.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RILLET_API_KEYS": "", **(env or {}),
               "RILLET_TEST_SERVER": self.mark}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rillet", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=new_session)
        self._wait_ready(timeout=180)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()[-5000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()[-5000:]}")

    def processes(self) -> list[int]:
        """The server's live processes: itself, its engine process, multiprocessing's resource tracker."""
        return marked_processes(self.mark)

    def engine_pid(self) -> int:
        """The engine process: a child of the server's main thread, or of the thread that replaced
        a dead one."""
        children = []
        for task in os.listdir(f"/proc/{self.process.pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/task/{task}/children") as f:
                children += [int(pid) for pid in f.read().split()]
        for pid in children:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    return pid
        raise LookupError("the server has no engine process")

    def wait_until_no_process_left(self, timeout: float = 10) -> None:
        wait_until_no_process_left(self.mark, timeout)

    def output(self) -> str:
        """Everything the server has written to stdout and stderr."""
        with open(self.log.name, errors="replace") as f:
            return f.read()

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
