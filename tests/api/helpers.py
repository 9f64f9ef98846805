from __future__ import annotations

import json
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
