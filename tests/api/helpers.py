from __future__ import annotations

import json
import socket
import time

import httpx

from tests.conftest import MODEL_NAME


# SmolLM2's end-of-text and end-of-turn tokens: banning them makes a choice run to max_tokens.
NO_END = {"0": -100, "2": -100}


def chat_body(content: str = "Name three colors.", **overrides) -> dict:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 12,
            "temperature": 0}
    body.update(overrides)
    return body


def start_stream(server, max_tokens: int, timeout: float = 120):
    """Opens a streamed completion that runs to max_tokens; returns the open stream and an iterator
    over its remaining lines, after the first."""
    stream = httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=timeout,
                          json=chat_body(max_tokens=max_tokens, stream=True, logit_bias=NO_END))
    response = stream.__enter__()
    assert response.status_code == 200
    lines = response.iter_lines()  # kept: a dropped line iterator closes the connection
    next(lines)
    return stream, lines


def stream_events(http: httpx.Client, body: dict) -> tuple[list[str], list[dict]]:
    """The raw SSE lines of a streamed completion, and the decoded chunks."""
    lines: list[str] = []
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    chunks = [json.loads(line[len("data: "):]) for line in lines if line != "data: [DONE]"]
    return lines, chunks


def stream_text(chunks: list[dict], index: int = 0) -> str:
    return "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"]
                   if c["index"] == index)


def access_lines(server, request_id: str | None = None, timeout: float = 10) -> list[dict]:
    """The server's JSON access lines (of one request id, when given). A line is written when the
    request ends on the server, a moment after the client has its answer: wait for one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        found = [entry for entry in lines if request_id is None or entry["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def send_head_only(port: int, head: str, timeout: float = 10) -> tuple[int, dict]:
    """Sends a request's head announcing a body, and never the body; returns the status and the JSON
    body of the answer, which must come without the server waiting for the announced body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _content_length(received):
            chunk = conn.recv(65536)
            assert chunk, f"the connection closed after {received!r}"
            received += chunk
    head_bytes, _, body = received.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(body)


def _content_length(received: bytes) -> int:
    for line in received.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
