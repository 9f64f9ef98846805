"""Server-sent events framing: data-only events, ending with [DONE]."""
from __future__ import annotations

import json

from rillet.api.errors import APIError

DONE = "data: [DONE]\n\n"


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def error_event(error: APIError) -> str:
    """After the 200 and the SSE headers have gone out, an error can only travel as an event."""
    return event(error.body())
