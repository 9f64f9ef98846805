"""Server-sent events framing: data-only events, ending with [DONE], as UTF-8 bytes."""
from __future__ import annotations

import json

from rillet.api.errors import APIError

DONE = b"data: [DONE]\n\n"

# One encoder for every event: json.dumps with keyword arguments builds a new JSONEncoder per call.
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event(payload: dict) -> bytes:
    return b"data: " + encode_json(payload).encode() + b"\n\n"


def error_event(error: APIError) -> bytes:
    """After the 200 and the SSE headers have gone out, an error can only travel as an event."""
    return event(error.body())
