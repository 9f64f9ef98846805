"""Failures a real server cannot be made to show on demand: the engine raising before or after
the response has started, the engine dying, a bug in the route. The app runs in-process over a
stub engine, so these check only the API layer: envelopes, in-band SSE errors, no tracebacks."""
from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient

from rillet.engine.async_engine import EngineDeadError
from rillet.engine.errors import PromptTooLongError, RequestFailedError, TooManyChoicesError
from tests.api.stub_app import SECRET, StubEngine, WordTokenizer, serving, stub_app

BODY = {"model": "stub", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}


@pytest.fixture
def stub():
    engine, tokenizer = StubEngine(), WordTokenizer()
    with TestClient(stub_app(engine, tokenizer), raise_server_exceptions=False) as http:
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


@pytest.mark.parametrize("stream", [False, True])
def test_engine_failure_before_any_output_is_500_with_request_id(stub, stream):
    """Before the first output nothing has been sent, so even a stream gets a real status."""
    engine, _, http = stub
    engine.failure = RuntimeError(SECRET)
    response = http.post("/v1/chat/completions", json={**BODY, "stream": stream})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert response.headers["x-request-id"] in error["message"]
    assert_hidden(response.text)


def test_failure_in_the_route_names_the_client_request_id(stub):
    _, tokenizer, http = stub
    tokenizer.broken = True
    response = http.post("/v1/chat/completions", json=BODY, headers={"x-request-id": "client-id-7"})
    assert response.status_code == 500 and "client-id-7" in response.json()["error"]["message"]
    assert response.headers["x-request-id"] == "client-id-7"
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
    for stream in (False, True):
        response = http.post("/v1/chat/completions", json={**BODY, "stream": stream})
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
    engine.fail_at_step = 1
    lines = sse_lines(http, BODY)
    assert json.loads(lines[-2][len("data: "):])["error"]["code"] == "engine_unavailable"


def test_dead_engine_fails_health_and_refuses_requests(stub):
    engine, _, http = stub
    engine.is_alive = False
    assert http.get("/health").status_code == 503
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"


def test_official_client_raises_api_error_on_a_mid_stream_failure_over_real_http():
    engine = StubEngine()
    engine.failure, engine.fail_at_step = RuntimeError(SECRET), 2
    with serving(stub_app(engine)) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        received = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in client.chat.completions.create(**BODY, stream=True):
                received.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert received == ["w0 ", "w1 "]
    assert caught.value.code == "internal_error" and SECRET not in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_the_engine_finds_too_long_is_400_context_length_exceeded(stub, stream):
    """However the engine's count differs from the API's check, it is never a 500."""
    engine, _, http = stub
    engine.failure = PromptTooLongError("the prompt has 70 tokens; the context holds 64")
    response = http.post("/v1/chat/completions", json={**BODY, "stream": stream})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")


def test_a_request_the_engine_refuses_is_422_naming_the_field(stub):
    engine, _, http = stub
    engine.failure = TooManyChoicesError("n is 9, but this server runs at most 8 sequences at once")
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 422 and response.json()["error"]["param"] == "n"


def test_a_request_the_engine_failed_is_500_and_only_that_request(stub):
    engine, _, http = stub
    engine.failure, engine.fail_at_step = RequestFailedError("IndexError while running the request"), 1
    lines = sse_lines(http, BODY)
    assert json.loads(lines[-2][len("data: "):])["error"]["code"] == "internal_error"
    engine.failure = None
    assert http.post("/v1/chat/completions", json=BODY).status_code == 200


def test_n_over_what_the_engine_runs_at_once_is_422_before_the_engine(stub):
    engine, _, http = stub
    engine.failure = RuntimeError("the engine must not see this request")
    response = http.post("/v1/chat/completions", json={**BODY, "n": 5})
    assert response.status_code == 422 and response.json()["error"]["param"] == "n"
    assert "at most 4 sequences" in response.json()["error"]["message"]
