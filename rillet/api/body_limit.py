"""A bound on the size of a request body: a larger one is a 413, refused from its Content-Length
before any of it is read, or, sent without one, as soon as what has arrived passes the bound."""
from __future__ import annotations

from starlette.exceptions import HTTPException

from rillet.api.errors import APIError, ErrorKind

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than this server's limit of {max_bytes} bytes"


class BodySizeLimitMiddleware:
    def __init__(self, app, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await APIError(ErrorKind.REQUEST_TOO_LARGE, _too_large(self.max_bytes)).response()(scope, receive, send)
            return
        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read; the app's handler answers it with the 413.
                    raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, bounded_receive, send)
