"""Bounds on a request body, checked on its bytes as they arrive, before anything parses them:

- its size: a larger one is a 413, refused from its Content-Length before any of it is read, or,
  sent without one, as soon as what has arrived passes the bound;
- its time: the whole body must arrive within `timeout` seconds of its head, or it is a 408 (a
  client that announces 1000 bytes and sends 28 holds nothing for long);
- its text: a string holding a lone surrogate escape (`"\\ud800"`) is a 400 `invalid_unicode`.
  Python's json module reads one into a str that no tokenizer takes; pydantic's JSON parser
  (jiter) refuses it, saying where. Only a body whose bytes hold a surrogate escape at all is
  parsed here, so the usual body costs one regular-expression scan.

Each is raised inside the route's read of the body, where the app's handlers answer it in OpenAI's
envelope.
"""
from __future__ import annotations

import asyncio
import re
import time

import pydantic_core
from starlette.exceptions import HTTPException

from rillet.api.errors import APIError, ErrorKind
from rillet.config import DEFAULTS

DEFAULT_MAX_REQUEST_BYTES = DEFAULTS.max_request_bytes
DEFAULT_BODY_TIMEOUT = DEFAULTS.body_timeout
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPE_LEN = 6  # \uXXXX: what of the last chunk is kept to find an escape cut in two


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than this server's limit of {max_bytes} bytes"


class BodySizeLimitMiddleware:
    def __init__(self, app, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES, timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await APIError(ErrorKind.REQUEST_TOO_LARGE, _too_large(self.max_bytes)).response()(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout
        received = 0
        complete = False
        tail = b""
        # Every chunk, once a surrogate escape has been seen: the body is then parsed here at its end.
        suspect: list[bytes] | None = None

        async def bounded_receive():
            nonlocal received, complete, tail, suspect
            if complete:  # the body is in; what follows is the wait for a disconnect, unbounded
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                # Raised inside the route's body read; the app's handler answers it with the 408.
                raise HTTPException(408, f"the request body did not arrive within {self.timeout:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] != "http.request":
                complete = True
                return message
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                raise HTTPException(413, _too_large(self.max_bytes))
            if suspect is None and _SURROGATE_ESCAPE.search(tail + chunk):
                suspect = []
            if suspect is not None:
                suspect.append(chunk)
            tail = chunk[-_ESCAPE_LEN:]
            if not message.get("more_body", False):
                complete = True
                if suspect is not None:
                    _check_unicode(b"".join(suspect))
            return message

        await self.app(scope, bounded_receive, send)


def _check_unicode(body: bytes) -> None:
    """Raises the 400 where jiter finds a lone surrogate; any other fault of the body is left to
    the route's own parsing, which names it as it always has."""
    try:
        pydantic_core.from_json(body)
    except ValueError as error:
        if "surrogate" in str(error) or "hex escape" in str(error):
            raise APIError(ErrorKind.INVALID_UNICODE, f"the body holds a string that is not valid Unicode "
                           f"(a lone surrogate escape, \\ud800 to \\udfff): {error}") from None
