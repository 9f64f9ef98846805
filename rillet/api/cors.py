"""CORS, for web pages of other origins that call the API from a browser: off unless origins are
given (--cors-origin). It is the outermost layer, so that a preflight (OPTIONS, which carries no
key) is answered before the key is checked, and so that every answer, a 401 or a 500 included,
carries the headers that let the page read it."""
from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware

# What a browser client sends: the key and JSON, a request id of its own, and the headers the
# official openai JavaScript client adds to every request (as Ollama allows them).
ALLOWED_HEADERS = (
    "Authorization", "Content-Type", "Accept", "X-Request-Id", "OpenAI-Organization", "OpenAI-Project",
    "X-Stainless-Arch", "X-Stainless-Async", "X-Stainless-Custom-Poll-Interval", "X-Stainless-Helper-Method",
    "X-Stainless-Lang", "X-Stainless-OS", "X-Stainless-Package-Version", "X-Stainless-Poll-Helper",
    "X-Stainless-Retry-Count", "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
)
# The response headers a page may read beyond the CORS-safelisted ones.
EXPOSED_HEADERS = (
    "x-request-id", "retry-after", "retry-after-ms", "x-should-retry",
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
)


def add_cors(app, origins: tuple[str, ...]) -> None:
    """Call last, after every other middleware, so that it runs first."""
    if not origins:
        return
    # Keys travel in Authorization, never in cookies: no credentials mode, so "*" stays possible.
    app.add_middleware(CORSMiddleware, allow_origins=[origin.rstrip("/") for origin in origins],
                       allow_methods=["GET", "POST", "OPTIONS"], allow_headers=ALLOWED_HEADERS,
                       expose_headers=EXPOSED_HEADERS, max_age=600)
