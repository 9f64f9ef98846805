"""Graceful shutdown of a real server process: SIGTERM closes the door, lets the stream in flight
finish within the grace period (or cuts it when the period runs out), and the process exits 0,
its engine process with it."""
from __future__ import annotations

import json
import signal
import time

import httpx

from tests.api.helpers import start_stream
from tests.conftest import RunningServer


def refuses_connections(server) -> bool:
    try:
        httpx.get(f"{server.base_url}/health", timeout=5)
    except httpx.ConnectError:
        return True
    except (httpx.ReadError, httpx.RemoteProtocolError):
        # accepted just before the listener closed, then reset: ask again until a connect fails
        return False
    return False


def test_sigterm_finishes_the_stream_in_flight_refuses_new_connections_and_exits_0():
    server = RunningServer(["--kv-cache-tokens", "2048", "--shutdown-grace", "60"])
    try:
        stream, lines = start_stream(server, max_tokens=150)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while not refuses_connections(server):
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        rest = [line for line in lines if line]
        stream.__exit__(None, None, None)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["usage"]["completion_tokens"] == 150
        assert server.process.wait(timeout=60) == 0
        assert "SIGTERM" in server.output()
        server.wait_until_no_process_left()
    finally:
        server.stop()


def test_a_stream_outlasting_the_grace_period_is_cut_and_the_process_still_exits_0():
    server = RunningServer(["--kv-cache-tokens", "2048", "--shutdown-grace", "1"])
    try:
        stream, lines = start_stream(server, max_tokens=1500)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rest: list[str] = []
        try:  # the cut connection ends the stream early, or breaks off with an error
            rest.extend(line for line in lines if line)
        except httpx.HTTPError:
            pass
        cut_after = time.monotonic() - signalled
        stream.__exit__(None, None, None)
        assert "data: [DONE]" not in rest
        assert len(rest) < 1500 and cut_after < 30
        assert server.process.wait(timeout=60) == 0
        server.wait_until_no_process_left()
    finally:
        server.stop()
