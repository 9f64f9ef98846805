"""Bounded input against the real server: a body over --max-request-bytes is a 413 refused before
it is read, and each capped field over its cap is a 422 naming it (rillet/api/schemas.py)."""
from __future__ import annotations

import pytest

from rillet.api.body_limit import DEFAULT_MAX_REQUEST_BYTES
from rillet.api.schemas import (MAX_LOGIT_BIAS_ENTRIES, MAX_MESSAGES, MAX_STOP_SEQUENCE_CHARS, MAX_STOP_SEQUENCES,
                                MAX_USER_CHARS)
from tests.api.helpers import chat_body, send_head_only


def assert_invalid(response, param: str, says: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert says in error["message"], error["message"]


def test_a_body_announced_over_the_limit_is_413_before_it_is_read(server):
    status, body = send_head_only(server.port, "POST /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1\n"
                                  f"Content-Type: application/json\nContent-Length: {DEFAULT_MAX_REQUEST_BYTES + 1}\n")
    assert status == 413
    assert body["error"]["code"] == "request_too_large" and str(DEFAULT_MAX_REQUEST_BYTES) in body["error"]["message"]


def test_a_chunked_body_over_the_limit_is_413(http):
    def pieces():
        yield b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "'
        for _ in range(DEFAULT_MAX_REQUEST_BYTES // 65536 + 1):
            yield b"a" * 65536
        yield b'"}]}'

    response = http.post("/v1/chat/completions", content=pieces(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    # Just under the limit is read, and refused for what it says, not for its size.
    under = http.post("/v1/chat/completions", json=chat_body("a " * 500_000))
    assert under.status_code == 400 and under.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("field, value, says", [
    ("logit_bias", {str(i): 1 for i in range(MAX_LOGIT_BIAS_ENTRIES + 1)}, f"at most {MAX_LOGIT_BIAS_ENTRIES}"),
    ("stop", ["a"] * (MAX_STOP_SEQUENCES + 1), f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
    ("stop", "x" * (MAX_STOP_SEQUENCE_CHARS + 1), f"at most {MAX_STOP_SEQUENCE_CHARS} characters"),
    ("stop", ["ok", "x" * (MAX_STOP_SEQUENCE_CHARS + 1)], f"at most {MAX_STOP_SEQUENCE_CHARS} characters"),
    ("user", "u" * (MAX_USER_CHARS + 1), f"at most {MAX_USER_CHARS} characters"),
    ("messages", [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1), f"at most {MAX_MESSAGES}"),
])
def test_a_field_over_its_cap_is_422_naming_it(http, field, value, says):
    assert_invalid(http.post("/v1/chat/completions", json=chat_body(**{field: value})), field, says)


def test_fields_at_their_caps_are_served(http):
    body = chat_body(max_tokens=2, logit_bias={str(i): 0.5 for i in range(MAX_LOGIT_BIAS_ENTRIES)},
                     stop=["z" * MAX_STOP_SEQUENCE_CHARS] * MAX_STOP_SEQUENCES, user="u" * MAX_USER_CHARS)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
