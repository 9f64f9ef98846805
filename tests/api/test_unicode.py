"""Invalid Unicode anywhere in a request body is a 400 invalid_unicode, found in its bytes before
anything parses them (rillet/api/body_limit.py), never a 500 from the tokenizer."""
from __future__ import annotations

import json
import re

import pytest

from tests.api.helpers import chat_body

TOOL_CALL = [{"role": "user", "content": "hi"},
             {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                   "function": {"name": "f", "arguments": '{"x": "\ud800"}'}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "ok"}]


@pytest.mark.parametrize("where, body", [
    ("content", chat_body("a\ud800b")),
    ("a text part", chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "a\udfffb"}]}])),
    ("tool_calls arguments", chat_body(messages=TOOL_CALL)),
    ("a tool's description", chat_body(tools=[{"type": "function", "function": {
        "name": "f", "description": "\udc00", "parameters": {"type": "object"}}}])),
    ("the user", chat_body(user="\ud83d")),
])
def test_a_lone_surrogate_anywhere_in_the_body_is_400_invalid_unicode(http, where, body):
    """In content, a text part and tool_calls arguments it was a 500: the tokenizer's TypeError,
    TextInputSequence must be str."""
    raw = json.dumps(body).encode()  # ensure_ascii writes the lone surrogate as an escape: \\ud800
    assert re.search(rb"[^\\]\\u[dD][89a-fA-F]", raw), raw
    response = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, (where, response.text)
    error = response.json()["error"]
    assert error["code"] == "invalid_unicode" and error["type"] == "invalid_request_error"


def test_surrogate_pairs_and_escaped_backslashes_are_no_lone_surrogates(http):
    for content in ("an emoji \U0001F642 sent as a surrogate pair", "a literal \\ud800, backslash and all"):
        raw = json.dumps(chat_body(content, max_tokens=1)).encode()  # ensure_ascii: the emoji as \ud83d\ude42
        assert b"\\ud83d\\ude42" in raw or b"\\\\ud800" in raw
        assert http.post("/v1/chat/completions", content=raw,
                         headers={"Content-Type": "application/json"}).status_code == 200


def test_a_body_that_is_not_utf_8_is_400_invalid_unicode(http):
    raw = json.dumps(chat_body("ab")).encode().replace(b"ab", b"a\xffb")
    response = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_unicode"
