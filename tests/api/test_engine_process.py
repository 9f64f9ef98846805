"""`rillet serve` runs its engine in a child process. A real server: the engine dying under load (and
a new one taking over, or the server giving up after repeated deaths), a signal to the whole
process group (Ctrl-C, or a service manager's SIGTERM), a model that cannot be loaded; each ends
without a hang and without a process left behind."""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.api.helpers import NO_END, chat_body, start_stream
from tests.conftest import RunningServer, free_port, wait_until_no_process_left


# The README's bound: after the engine process dies, new requests succeed again within this long.
RESTART_BOUND_SECONDS = 30


def wait_for_a_new_engine(server, old_pid: int, since: float) -> None:
    """Until a request succeeds again; meanwhile every answer is a clean 503 engine_unavailable."""
    while (reply := httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(max_tokens=2),
                               timeout=30)).status_code != 200:
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "engine_unavailable", reply.text
        assert time.monotonic() - since < RESTART_BOUND_SECONDS, "no new engine within the README's bound"
        time.sleep(0.1)
    assert reply.json()["usage"]["completion_tokens"] == 2
    assert server.engine_pid() != old_pid
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_a_killed_engine_under_load_ends_every_request_cleanly_and_a_new_one_takes_over():
    server = RunningServer(["--kv-cache-tokens", "4096"])
    try:
        streams = [start_stream(server, max_tokens=1500, timeout=60) for _ in range(3)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            whole = [pool.submit(httpx.post, f"{server.base_url}/v1/chat/completions", timeout=60,
                                 json=chat_body(max_tokens=1500, logit_bias=NO_END)) for _ in range(2)]
            deadline = time.monotonic() + 30
            while server.metric("rillet_running_sequences") < 5:
                assert time.monotonic() < deadline, "the load did not start"
                time.sleep(0.05)
            old_pid = server.engine_pid()
            old_priority = os.getpriority(os.PRIO_PROCESS, old_pid)
            os.kill(old_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            for stream, lines in streams:
                rest = [line for line in lines if line]  # ends; a hang would raise ReadTimeout
                stream.__exit__(None, None, None)
                assert rest[-1] == "data: [DONE]"
                assert json.loads(rest[-2][len("data: "):])["error"]["code"] == "engine_unavailable"
            for future in whole:
                response = future.result()
                assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
        wait_for_a_new_engine(server, old_pid, killed_at)
        assert "the engine process exited unexpectedly" in server.output()
        # The new engine keeps the priority the HTTP process gave up to the first (--http-nice).
        assert os.getpriority(os.PRIO_PROCESS, server.engine_pid()) == old_priority
        # Nothing of the dead engine's requests is left in the new one.
        assert server.metric("rillet_kv_blocks_free") == server.metric("rillet_kv_blocks_total")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        server.wait_until_no_process_left()
    finally:
        server.stop()


def test_an_engine_that_keeps_dying_ends_the_server_with_status_1():
    server = RunningServer(["--kv-cache-tokens", "2048", "--engine-restarts", "1"])
    try:
        first = server.engine_pid()
        os.kill(first, signal.SIGKILL)
        wait_for_a_new_engine(server, first, time.monotonic())
        os.kill(server.engine_pid(), signal.SIGKILL)
        assert server.process.wait(timeout=60) == 1
        assert "the engine process died 2 times within 60 s; exiting" in server.output()
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


def test_only_the_engine_process_loads_torch(server):
    """The HTTP process reads the tokenizer and template only: torch (some 230 MB resident) is the
    engine process's alone."""
    def maps(pid: int) -> str:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()

    assert "libtorch" not in maps(server.process.pid)
    assert "libtorch" in maps(server.engine_pid())
