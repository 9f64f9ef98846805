"""The playground: a chat page served at / by the server itself, from the static files beside this
module (no build step, nothing fetched from elsewhere). The page calls the API like any client, so
on a server with keys it loads without one, and each of its API calls needs one.

Its Content-Security-Policy lets only these files run: no inline script, no other origin, so that
even a mistake in rendering a model's answer could not run what the answer says."""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from rillet.api.errors import APIError, ErrorKind

ASSETS = {"playground.css": "text/css; charset=utf-8", "playground.js": "text/javascript; charset=utf-8",
          "markdown.js": "text/javascript; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def playground_router() -> APIRouter:
    files = resources.files(__package__)
    page = (files / "index.html").read_bytes()
    assets = {name: (files / name).read_bytes() for name in ASSETS}
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    @router.get("/playground/{name}")
    async def asset(name: str) -> Response:
        if name not in assets:
            raise APIError(ErrorKind.ROUTE_NOT_FOUND, f"no route GET /playground/{name}")
        return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)

    return router
