"""Rate limits per key against a real server: 429s with OpenAI's headers and types, tokens reserved
and settled, the official client's retry honouring Retry-After; the buckets' arithmetic in-process."""
from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from rillet.api.auth import KeyConfigError, KeyStore
from rillet.api.rate_limit import KeyLimits, RateLimiter, openai_duration
from rillet.api.errors import APIError
from tests.api.helpers import NO_END, access_lines, chat_body, send_head_only
from tests.conftest import RunningServer

HEADER_NAMES = [f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens")
                for what in ("limit", "remaining", "reset")]
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys_file.write_text('''
[[keys]]
id = "three-a-minute"
key = "sk-rpm-3"
rpm = 3

[[keys]]
id = "thousand-tokens"
key = "sk-tpm-1000"
tpm = 1000

[[keys]]
id = "retrying"
key = "sk-tpm-600"
tpm = 600

[[keys]]
id = "unlimited"
key = "sk-unlimited"
rpm = 0

[[keys]]
id = "bad-requests"
key = "sk-rpm-4-bad"
rpm = 4

[[keys]]
id = "schema-reader"
key = "sk-rpm-2-schema"
rpm = 2
''')
    running = RunningServer(["--api-keys-file", str(keys_file), "--api-key", "sk-defaults",
                             "--rate-limit-rpm", "1000", "--kv-cache-tokens", "4096", "--public-metrics"])
    yield running
    running.stop()


def post(server, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=120)


def client_for(server, key: str, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=max_retries, timeout=120)


def test_requests_over_the_limit_get_429_with_retry_after_and_headers(limited_server):
    remaining = [post(limited_server, "sk-rpm-3", chat_body(max_tokens=1)) for _ in range(3)]
    assert [r.status_code for r in remaining] == [200] * 3
    assert [r.headers["x-ratelimit-remaining-requests"] for r in remaining] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in remaining)
    assert "x-ratelimit-limit-tokens" not in remaining[0].headers  # no token limit on this key
    refused = post(limited_server, "sk-rpm-3", chat_body(max_tokens=1))
    assert refused.status_code == 429
    assert refused.json()["error"] == {**refused.json()["error"], "type": "requests", "code": "rate_limit_exceeded",
                                       "param": None}
    # One request comes back every 20 s.
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert DURATION.match(refused.headers["x-ratelimit-reset-requests"])
    with pytest.raises(openai.RateLimitError) as caught:
        client_for(limited_server, "sk-rpm-3").chat.completions.create(**chat_body(max_tokens=1))
    assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "requests"


def test_tokens_are_reserved_up_front_and_the_unused_part_given_back(limited_server):
    held = httpx.stream("POST", f"{limited_server.base_url}/v1/chat/completions",
                        json=chat_body(max_tokens=900, stream=True, logit_bias=NO_END),
                        headers={"Authorization": "Bearer sk-tpm-1000"}, timeout=120)
    with held as stream:
        assert stream.status_code == 200
        prompt_tokens = 1000 - int(stream.headers["x-ratelimit-remaining-tokens"]) - 900
        assert 0 < prompt_tokens < 100
        lines = stream.iter_lines()  # kept: a dropped line iterator closes the connection
        next(lines)
        # While the stream holds its 900 tokens, a request for 100 more does not fit.
        refused = post(limited_server, "sk-tpm-1000", chat_body(max_tokens=100))
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
        assert refused.headers["x-ratelimit-limit-tokens"] == "1000"
    # Hanging up ends the request; what it did not use goes back, and the next one fits.
    deadline = time.monotonic() + 30
    while (reply := post(limited_server, "sk-tpm-1000", chat_body(max_tokens=100))).status_code == 429:
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.2)
    assert reply.status_code == 200


def test_a_request_larger_than_the_token_limit_is_429_that_says_do_not_retry(limited_server):
    refused = post(limited_server, "sk-tpm-1000", chat_body(max_tokens=2000))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
    assert refused.headers["x-should-retry"] == "false" and "retry-after" not in refused.headers
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        client_for(limited_server, "sk-tpm-1000", max_retries=2).chat.completions.create(**chat_body(max_tokens=2000))
    assert time.monotonic() - started < 5  # the client took the hint and did not back off and retry


def test_official_client_retry_waits_for_retry_after_then_succeeds(limited_server):
    first = client_for(limited_server, "sk-tpm-600").chat.completions.create(**chat_body(max_tokens=1))
    # The second asks for the whole minute's 600 tokens: it must wait for the first one's to come back.
    body = chat_body(max_tokens=600 - first.usage.prompt_tokens)
    refused = post(limited_server, "sk-tpm-600", body)
    assert refused.status_code == 429
    wait = int(refused.headers["retry-after-ms"]) / 1000
    assert 0 < wait <= int(refused.headers["retry-after"]) <= 60
    refused_before = limited_server.metric('rillet_requests_total{status="429"}')
    started = time.monotonic()
    reply = client_for(limited_server, "sk-tpm-600", max_retries=2).chat.completions.create(**body)
    assert reply.choices[0].message.content
    assert limited_server.metric('rillet_requests_total{status="429"}') - refused_before >= 1
    assert time.monotonic() - started >= 0.5 * wait


def test_every_v1_response_carries_the_key_headers(limited_server):
    for path in ("/v1/models", "/v1/no-such-route"):
        response = httpx.get(f"{limited_server.base_url}{path}", headers={"Authorization": "Bearer sk-defaults"})
        assert response.headers["x-ratelimit-limit-requests"] == "1000"
        assert all(name in response.headers for name in HEADER_NAMES[:3])
    unlimited = httpx.get(f"{limited_server.base_url}/v1/models", headers={"Authorization": "Bearer sk-unlimited"})
    assert unlimited.status_code == 200
    assert not any(name in unlimited.headers for name in HEADER_NAMES)


def test_every_request_counts_valid_or_not_and_the_limit_is_checked_before_the_body_is_read(limited_server):
    def send(body: bytes) -> httpx.Response:
        return httpx.post(f"{limited_server.base_url}/v1/chat/completions", content=body, timeout=30,
                          headers={"Authorization": "Bearer sk-rpm-4-bad", "Content-Type": "application/json"})

    statuses = [send(b"{not json").status_code, send(b'{"model": 5}').status_code,
                httpx.get(f"{limited_server.base_url}/v1/models", headers={"Authorization": "Bearer sk-rpm-4-bad"}).status_code,
                send(json.dumps(chat_body(max_tokens=1, n=0)).encode()).status_code]
    assert statuses == [422, 422, 200, 422]
    # The fifth request's head announces a body that never comes: the 429 is sent without reading it.
    status, body = send_head_only(limited_server.port, "POST /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1\n"
                                  "Authorization: Bearer sk-rpm-4-bad\nContent-Type: application/json\n"
                                  "Content-Length: 1000\n")
    assert status == 429 and body["error"]["type"] == "requests"


def test_access_log_names_the_key_id_never_the_key(limited_server):
    request_id = post(limited_server, "sk-unlimited", chat_body(max_tokens=1)).headers["x-request-id"]
    assert access_lines(limited_server, request_id)[0]["key_id"] == "unlimited"
    assert "sk-unlimited" not in limited_server.output()


# -- in-process: the arithmetic of the buckets ---------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_buckets_refill_continuously_and_refunds_never_overfill():
    clock = FakeClock()
    limits = KeyLimits(rpm=60, tpm=600, clock=clock)
    reservation = limits.reserve(600)
    with pytest.raises(APIError) as caught:
        limits.reserve(10)
    assert caught.value.kind.value.type == "tokens" and caught.value.headers["Retry-After"] == "1"
    clock.now += 1  # 10 tokens and one request a second
    limits.reserve(10).settle(10)
    reservation.settle(100)  # 500 unused go back
    assert limits.tokens.level == 500
    clock.now += 3600
    limits.refund_tokens(1000)
    assert limits.tokens.level == 600 and limits.requests.level == 60


def test_a_refused_request_takes_nothing():
    limits = KeyLimits(rpm=2, tpm=100, clock=FakeClock())
    with pytest.raises(APIError):
        limits.reserve(101)
    limits.reserve(60)
    with pytest.raises(APIError):
        limits.reserve(50)
    assert limits.tokens.level == 40
    limits.take_request()
    limits.take_request()
    with pytest.raises(APIError) as caught:
        limits.take_request()
    assert caught.value.kind.value.type == "requests" and limits.requests.level == 0


def test_open_server_shares_one_bucket_and_keys_override_defaults():
    store = KeyStore.from_settings(["sk-a"], None)
    limiter = RateLimiter(default_rpm=5, default_tpm=None)
    assert limiter.limits_for(None) is limiter.limits_for(None)
    assert limiter.limits_for(store.keys[0]).requests.capacity == 5
    assert RateLimiter().limits_for(None) is None
    assert RateLimiter().reserve(None, 10 ** 9).limits is None


@pytest.mark.parametrize("seconds, text", [(0.012, "12ms"), (0, "0ms"), (1, "1s"), (19.5, "19.5s"),
                                           (360, "6m0s"), (3723.5, "1h2m3.5s")])
def test_reset_durations_are_written_as_openai_writes_them(seconds, text):
    assert openai_duration(seconds) == text


def test_keys_file_limits(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[[keys]]\nkey = "x"\nrpm = 5\ntpm = 0\n')
    key = KeyStore.from_settings([], str(good)).keys[0]
    assert (key.rpm, key.tpm) == (5, 0)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\nkey = "x"\nrpm = -1\n')
    with pytest.raises(KeyConfigError, match="rpm"):
        KeyStore.from_settings([], str(bad))


def test_the_openapi_schema_takes_from_the_same_bucket(limited_server):
    """/openapi.json (and /metrics) answered as often as asked, a key's limits notwithstanding."""
    def get(path: str) -> httpx.Response:
        return httpx.get(f"{limited_server.base_url}{path}", headers={"Authorization": "Bearer sk-rpm-2-schema"})

    statuses = [get("/openapi.json").status_code, get("/v1/models").status_code, get("/openapi.json").status_code]
    assert statuses == [200, 200, 429]
