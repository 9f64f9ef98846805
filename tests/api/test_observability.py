"""Request ids, the JSON access log and the API's Prometheus metrics, against the shared server."""
from __future__ import annotations

import re

import pytest

from tests.api.helpers import NO_END, access_lines, chat_body


@pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/models", "/v1/nowhere"])
def test_every_response_carries_a_fresh_request_id(http, path):
    first, second = http.get(path), http.get(path)
    assert re.fullmatch(r"req_[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("sent, kept", [("trace-42:a.b_c", "trace-42:a.b_c"), ("bad id\t<script>", "badidscript"),
                                        ("x" * 500, "x" * 128)])
def test_a_client_request_id_is_honoured_within_a_safe_alphabet_and_length(http, sent, kept):
    assert http.get("/v1/models", headers={"x-request-id": sent}).headers["x-request-id"] == kept


def test_an_id_with_nothing_safe_in_it_is_replaced(http):
    assert http.get("/v1/models", headers={"x-request-id": "<>"}).headers["x-request-id"].startswith("req_")


def test_one_json_access_line_per_request(http, server):
    response = http.post("/v1/chat/completions", json=chat_body(max_tokens=3, user="log-user-1", logit_bias=NO_END),
                         headers={"x-request-id": "access-log-1"})
    assert response.status_code == 200
    [entry] = access_lines(server, "access-log-1")
    usage = response.json()["usage"]
    assert entry["status"] == 200 and entry["model"] == response.json()["model"] and entry["user"] == "log-user-1"
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (usage["prompt_tokens"], 3)
    assert entry["finish_reason"] == "length" and entry["completion_id"] == response.json()["id"]
    assert 0 < entry["ttft_s"] <= entry["latency_s"]
    assert "key_id" not in entry  # an open server has no keys


def test_errors_and_hang_ups_are_logged_too(http, server):
    http.post("/v1/chat/completions", json=chat_body(model="nope"), headers={"x-request-id": "access-log-404"})
    assert access_lines(server, "access-log-404")[0]["status"] == 404
    with http.stream("POST", "/v1/chat/completions", json=chat_body(max_tokens=500, stream=True, logit_bias=NO_END),
                     headers={"x-request-id": "access-log-gone"}) as stream:
        lines = stream.iter_lines()
        next(lines)
    [entry] = access_lines(server, "access-log-gone")
    assert entry["status"] == 200 and entry["cancelled"] is True and entry["completion_tokens"] < 500


def test_metrics_count_requests_by_status_and_time_them(http, server):
    before = {name: server.metric(name) for name in (
        'rillet_requests_total{status="200"}', "rillet_time_to_first_token_seconds_count",
        "rillet_inter_token_latency_seconds_count", "rillet_request_latency_seconds_count")}
    http.post("/v1/chat/completions", json=chat_body(max_tokens=4, logit_bias=NO_END))
    after = {name: server.metric(name) for name in before}
    assert {name: after[name] - before[name] for name in before} == {
        'rillet_requests_total{status="200"}': 1, "rillet_time_to_first_token_seconds_count": 1,
        # Four tokens, one per engine output: three gaps between them.
        "rillet_inter_token_latency_seconds_count": 3, "rillet_request_latency_seconds_count": 1}
    http.get("/v1/nowhere")
    assert server.metric('rillet_requests_total{status="404"}') >= 1
    assert server.metric("rillet_queued_requests") == 0 and server.metric("rillet_queued_prompt_tokens") == 0
    assert 0 <= server.metric("rillet_prefix_cache_hit_rate") <= 1
