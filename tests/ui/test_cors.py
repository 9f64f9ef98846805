"""CORS: off by default; with --cors-origin, a preflight is answered before the key is checked,
and the answers of the allowed origins carry the headers that let a page read them."""
from __future__ import annotations

import httpx

from tests.api.helpers import chat_body
from tests.ui.conftest import API_KEY

ALLOWED = "http://allowed.test"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}


def test_a_preflight_from_an_allowed_origin_needs_no_key(keyed_cors_server):
    response = httpx.options(f"{keyed_cors_server.base_url}/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers


def test_a_preflight_from_another_origin_is_refused(keyed_cors_server):
    response = httpx.options(f"{keyed_cors_server.base_url}/v1/chat/completions",
                             headers={"Origin": "http://elsewhere.test", **PREFLIGHT})
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_answers_to_an_allowed_origin_may_be_read(keyed_cors_server):
    url = f"{keyed_cors_server.base_url}/v1/chat/completions"
    answer = httpx.post(url, json=chat_body(max_tokens=1),
                        headers={"Origin": ALLOWED, "Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ALLOWED
    exposed = answer.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "x-ratelimit-remaining-requests" in exposed and "retry-after" in exposed
    # A refusal too: the page can tell its person that a key is needed.
    refused = httpx.post(url, json=chat_body(max_tokens=1), headers={"Origin": ALLOWED})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED
    # Another origin gets its answer without the header: its browser keeps it from the page.
    other = httpx.get(f"{keyed_cors_server.base_url}/v1/models",
                      headers={"Origin": "http://elsewhere.test", "Authorization": f"Bearer {API_KEY}"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(http):
    preflight = http.options("/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
    simple = http.get("/v1/models", headers={"Origin": ALLOWED})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
