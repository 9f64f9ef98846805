"""`rillet serve` runs its engine in a child process. A real server: the engine dying under an open
stream, a signal to the whole process group (Ctrl-C, or a service manager's SIGTERM), a model
that cannot be loaded; each ends without a hang and without a process left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.api.helpers import chat_body, start_stream
from tests.conftest import RunningServer, free_port, wait_until_no_process_left


def test_a_killed_engine_ends_open_streams_with_an_error_and_health_turns_503():
    server = RunningServer(["--kv-cache-tokens", "2048"])
    try:
        stream, lines = start_stream(server, max_tokens=1500, timeout=30)
        os.kill(server.engine_pid(), signal.SIGKILL)
        rest = [line for line in lines if line]  # ends; a hang would raise ReadTimeout
        stream.__exit__(None, None, None)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["error"]["code"] == "engine_unavailable"
        assert httpx.get(f"{server.base_url}/health").status_code == 503
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body())
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
        assert "the engine process exited unexpectedly" in server.output()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        server.wait_until_no_process_left()
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_finishes_the_stream_then_ends_every_process(sig):
    """The engine process ignores the signal; the server finishes the stream, then stops it."""
    server = RunningServer(["--kv-cache-tokens", "2048", "--shutdown-grace", "60"], new_session=True)
    try:
        stream, lines = start_stream(server, max_tokens=100)
        os.killpg(server.process.pid, sig)
        rest = [line for line in lines if line]
        stream.__exit__(None, None, None)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["usage"]["completion_tokens"] == 100
        assert server.process.wait(timeout=60) == 0
        server.wait_until_no_process_left()
    finally:
        server.stop()


def test_a_model_that_cannot_be_loaded_is_an_error_and_exit_1():
    mark = uuid.uuid4().hex
    result = subprocess.run(
        [sys.executable, "-m", "rillet", "serve", "--port", str(free_port()), "--model", "/nowhere/model.gguf"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RILLET_TEST_SERVER": mark})
    assert result.returncode == 1
    assert "rillet: error: model file not found: /nowhere/model.gguf" in result.stderr
    assert "Traceback" not in result.stderr
    wait_until_no_process_left(mark)


def test_the_http_process_gives_cpu_priority_to_the_engine_process(server):
    """--http-nice (default 10): on two cores, HTTP work would otherwise stall the model step's threads."""
    http_nice = os.getpriority(os.PRIO_PROCESS, server.process.pid)
    engine_nice = os.getpriority(os.PRIO_PROCESS, server.engine_pid())
    assert http_nice == min(19, engine_nice + 10)
