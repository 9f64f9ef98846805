"""Ray Serve's HTTP proxy gives every request an x-request-id (a uuid when the client sent none)
and adds it to every response, after the app has set its own. This middleware, outermost in the
proxy, makes the wire what a single server sends: a request without an id gets a fresh `req_…`,
as rillet's app would make (the proxy and the app then agree on it, and Serve's logs carry it),
and a response carries one x-request-id, the app's."""
from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders

_HEADER = b"x-request-id"


class SingleRequestIdMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = MutableHeaders(scope=scope)
        if "x-request-id" not in headers:
            headers["x-request-id"] = f"req_{uuid.uuid4().hex}"

        async def send_one_id(message) -> None:
            if message["type"] == "http.response.start":
                seen = False
                kept = []
                for name, value in message.get("headers", []):
                    if name.lower() == _HEADER:
                        if seen:
                            continue
                        seen = True
                    kept.append((name, value))
                message["headers"] = kept
            await send(message)

        await self.app(scope, receive, send_one_id)


# Ray Serve's proxy calls this (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, set by launch.py).
PROXY_CALLBACK = "rillet.cluster.proxy_headers.proxy_middlewares"


def proxy_middlewares() -> list:
    from starlette.middleware import Middleware

    return [Middleware(SingleRequestIdMiddleware)]
