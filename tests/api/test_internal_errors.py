"""Failures a real server cannot be made to show on demand: the engine raising before or after
the response has started, the engine dying, a bug in the route. The app runs in-process over a
stub engine, so these check only the API layer: envelopes, in-band SSE errors, no tracebacks."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from fastapi.testclient import TestClient

from rillet.api.app import create_app
from rillet.api.served_model import ServedModel
from rillet.engine.async_engine import EngineDeadError
from rillet.engine.outputs import ChoiceDelta, RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stats import EngineStats

SECRET = "secret detail of the failure"
BODY = {"model": "stub", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}


class WordTokenizer:
    vocab_size = 100

    def __init__(self) -> None:
        self.broken = False

    def encode(self, text: str) -> list[int]:
        if self.broken:
            raise RuntimeError(SECRET)
        return list(range(len(text.split())))


class JoiningTemplate:
    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return " ".join(m["content"] or "" for m in messages)


class StubEngine:
    """Yields one word per step; raises `failure` at step `fail_at_step` when set."""

    def __init__(self) -> None:
        self.is_alive = True
        self.failure: BaseException | None = None
        self.fail_at_step = 0

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 0, 0, 0, 0, 0, 0, 0)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        steps = params.max_tokens or 3
        for step in range(steps):
            if self.failure is not None and step == self.fail_at_step:
                raise self.failure
            last = step == steps - 1
            deltas = [ChoiceDelta(i, f"w{step} ", [step], "length" if last else None) for i in range(params.n)]
            yield RequestOutput(request_id, len(prompt_token_ids), deltas, finished=last)


@pytest.fixture
def stub():
    engine, tokenizer = StubEngine(), WordTokenizer()
    app = create_app(engine, ServedModel(name="stub", tokenizer=tokenizer, chat_template=JoiningTemplate(),
                                         max_context_len=64, fingerprint="fp_stub", created=1))
    with TestClient(app, raise_server_exceptions=False) as http:
        yield engine, tokenizer, http


def assert_hidden(text: str) -> None:
    assert SECRET not in text and "Traceback" not in text


def sse_lines(http: TestClient, body: dict) -> list[str]:
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_stub_pipeline_works(stub):
    _, _, http = stub
    reply = http.post("/v1/chat/completions", json=BODY).json()
    assert reply["choices"][0]["message"]["content"] == "w0 w1 w2 "
    assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_engine_failure_before_any_output_is_500_with_request_id(stub):
    engine, _, http = stub
    engine.failure = RuntimeError(SECRET)
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "chatcmpl-" in error["message"]
    assert_hidden(response.text)


def test_failure_before_the_request_has_an_id_still_names_one(stub):
    _, tokenizer, http = stub
    tokenizer.broken = True
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 500 and "req_" in response.json()["error"]["message"]
    assert_hidden(response.text)


def test_engine_failure_mid_stream_is_an_sse_error_event_then_done(stub):
    engine, _, http = stub
    engine.failure, engine.fail_at_step = RuntimeError(SECRET), 2
    lines = sse_lines(http, BODY)
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][len("data: "):])["error"]
    assert error["code"] == "internal_error" and error["type"] == "server_error"
    contents = [json.loads(line[len("data: "):])["choices"][0]["delta"].get("content") for line in lines[1:-2]]
    assert contents == ["w0 ", "w1 "]
    assert_hidden("\n".join(lines))


def test_engine_death_is_503(stub):
    engine, _, http = stub
    engine.failure = EngineDeadError("the engine stopped")
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
    lines = sse_lines(http, BODY)
    assert json.loads(lines[-2][len("data: "):])["error"]["code"] == "engine_unavailable"


def test_dead_engine_fails_health_and_refuses_requests(stub):
    engine, _, http = stub
    engine.is_alive = False
    assert http.get("/health").status_code == 503
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
