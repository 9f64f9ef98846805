"""Connections and request heads against a real server started with short deadlines and a small
cap (rillet/api/http_server.py, request_head.py, body_limit.py): a head or a body that dribbles
in is cut off with a 408, a connection over the cap is a 503 at once, the open-file limit is
raised, heads over their bounds are 431s, and a loopback server answers only its own Host names."""
from __future__ import annotations

import json
import resource
import selectors
import socket
import sys
import time
import types

import httpx
import openai
import pytest

from tests.api.helpers import chat_body
from tests.conftest import RunningServer

DEADLINE = 2  # --header-timeout and --body-timeout
CAP = 40  # --max-connections


@pytest.fixture(scope="module")
def guarded():
    # A low soft limit of open files, as a shell's `ulimit -S -n 512` leaves it: the server raises it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
    try:
        running = RunningServer(["--header-timeout", str(DEADLINE), "--body-timeout", str(DEADLINE),
                                 "--max-connections", str(CAP), "--allowed-host", "rillet.lan",
                                 "--kv-cache-tokens", "2048"])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    yield running
    running.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_answer(conn: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and how long that took."""
    started = time.monotonic()
    conn.settimeout(timeout)
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def open_file_limits(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return line.split()[3], line.split()[4]


def test_the_open_file_limit_is_raised_to_the_hard_limit(guarded):
    soft, hard = open_file_limits(guarded.process.pid)
    assert soft == hard, f"soft {soft}, hard {hard}"


def test_a_head_sent_a_line_at_a_time_is_cut_off_with_408(guarded):
    """Slowloris: one header line every 0.3 s was held for ever."""
    with connect(guarded) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        answer = b""
        conn.settimeout(0.3)
        while time.monotonic() - started < DEADLINE + 5:
            try:
                conn.sendall(b"X-Slow: 1\r\n")
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
    assert answer, "the connection was still open"
    status, error = status_and_error(answer)
    assert status == 408 and error["code"] == "request_timeout" and DEADLINE - 0.5 < took < DEADLINE + 3


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with connect(guarded) as conn:
        answer, took = read_answer(conn, DEADLINE + 5)
    assert answer == b"" and took < DEADLINE + 3


def test_a_body_that_stops_arriving_is_408(guarded):
    """50 connections that declared Content-Length 1000 and sent 28 bytes were held for ever."""
    with connect(guarded) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"model": "x", "messages": [')
        answer, took = read_answer(conn, DEADLINE + 5)
    status, error = status_and_error(answer)
    assert status == 408 and error["code"] == "request_timeout" and took < DEADLINE + 3
    assert b"connection: close" in answer.lower()


def test_a_request_that_takes_its_time_within_the_deadlines_is_served(guarded):
    body = json.dumps(chat_body(max_tokens=1)).encode()
    with connect(guarded) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(DEADLINE / 3)
        conn.sendall(b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(DEADLINE / 3)
        conn.sendall(body[10:])
        answer, _ = read_answer(conn, 30)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_connections_over_the_cap_get_a_503_at_once_and_one_log_line(guarded):
    conns = [connect(guarded) for _ in range(CAP + 20)]
    try:
        selector = selectors.DefaultSelector()
        for conn in conns:
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ)
        answers: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + DEADLINE / 2  # before the head deadline closes the idle ones
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                chunk = key.fileobj.recv(65536)
                answers[key.fileobj] = answers.get(key.fileobj, b"") + chunk
                if not chunk:
                    selector.unregister(key.fileobj)
        refused = [answer for answer in answers.values() if answer.startswith(b"HTTP/1.1 503")]
        assert 15 <= len(refused) <= 20, f"{len(refused)} refused of {len(conns)}"
        status, error = status_and_error(refused[0])
        assert status == 503 and error["code"] == "overloaded" and b"retry-after: 1" in refused[0].lower()
    finally:
        for conn in conns:
            conn.close()
    time.sleep(0.5)
    assert httpx.get(f"{guarded.base_url}/health", timeout=10).status_code == 200
    assert guarded.output().count("refused a connection") == 1  # one line a LOG_INTERVAL, not one a connection
    assert "Traceback" not in guarded.output()


def raw_answer(server, head: bytes) -> tuple[int, dict | None]:
    with connect(server) as conn:
        try:
            conn.sendall(head)
        except OSError:  # the server has answered and closed before the whole head was sent
            pass
        answer, _ = read_answer(conn, 30)
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_bytes.split()[1])
    return status, json.loads(body).get("error") if status >= 400 else None


def test_a_request_head_over_16_kib_is_431_in_the_error_envelope(http, server):
    status, error = raw_answer(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20)
                               + b"\r\n\r\n")
    assert status == 431 and error["code"] == "request_headers_too_large"
    status, error = raw_answer(server, b"GET /health HTTP/1.1\r\n\x01 malformed\r\n\r\n")
    assert status == 400 and error["code"] == "invalid_http_request"


def test_more_than_100_headers_are_431_and_100_are_served(server):
    def head(count: int) -> bytes:
        lines = b"".join(b"X-%d: b\r\n" % i for i in range(count - 2))
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + lines + b"\r\n"

    status, error = raw_answer(server, head(101))
    assert status == 431 and error["code"] == "request_headers_too_large" and "at most 100" in error["message"]
    assert raw_answer(server, head(100))[0] == 200


def test_the_http_stack_is_h11_on_asyncio_whatever_else_is_installed(monkeypatch):
    """uvicorn's "auto" took httptools once uvicorn's standard extras were installed, and httptools
    read a 64 MB header whole."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from rillet.api.http_server import MAX_HEAD_BYTES, ConnectionLimits, server_config
    from tests.api.stub_app import stub_app

    monkeypatch.setitem(sys.modules, "httptools", types.ModuleType("httptools"))
    config = server_config(stub_app(), "127.0.0.1", 0, ConnectionLimits(), 1)
    config.load()
    assert issubclass(config.http_protocol_class, H11Protocol)
    assert config.h11_max_incomplete_event_size == MAX_HEAD_BYTES and config.loop == "asyncio"
    assert config.ws_protocol_class is None


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "rebind.127.0.0.1.nip.io"])
def test_a_loopback_server_refuses_a_host_it_does_not_answer_to(server, host):
    """DNS rebinding: a page of attacker.example, its name pointed at 127.0.0.1, read the server."""
    for path in ("/v1/models", "/health", "/"):
        response = httpx.get(f"{server.base_url}{path}", headers={"Host": host})
        assert response.status_code == 403 and response.json()["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "app.localhost", "[::1]", "10.1.2.3"])
def test_a_loopback_server_answers_its_own_names_and_any_address(server, host):
    port = server.port
    assert httpx.get(f"{server.base_url}/health", headers={"Host": f"{host}:{port}"}).status_code == 200


def test_allowed_host_adds_a_name_and_the_official_client_works_through_localhost(guarded):
    assert httpx.get(f"{guarded.base_url}/health", headers={"Host": "rillet.lan:8000"}).status_code == 200
    assert httpx.get(f"{guarded.base_url}/health", headers={"Host": "evil.lan"}).status_code == 403
    client = openai.OpenAI(base_url=f"http://localhost:{guarded.port}/v1", api_key="x", max_retries=0)
    assert client.chat.completions.create(**chat_body(max_tokens=1)).usage.completion_tokens == 1


def test_repeated_log_lines_are_held_back_and_counted():
    import logging

    from rillet.api.http_server import RepeatFilter

    repeat_filter = RepeatFilter(interval=0.2)
    records = [logging.LogRecord("rillet.http", logging.WARNING, __file__, 1, "refused %d", (i,), None)
               for i in range(1001)]
    assert [repeat_filter.filter(record) for record in records[:1000]].count(True) == 1
    time.sleep(0.25)
    assert repeat_filter.filter(records[1000])
    assert records[1000].getMessage() == "refused 1000 (999 more like it in the last 0.2 s not logged)"
