from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.api.helpers import NO_END, chat_body
from tests.conftest import MODEL_NAME


def assert_envelope(response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize("override, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logit_bias": {"999999": 5}}, "logit_bias"),
    ({"logit_bias": {"12": 101}}, "logit_bias.12"),
    ({"temperature": "hot"}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "function", "content": "42"}]}, "messages.0.name"),
    ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.tool_call_id"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"no_such_field": 1}, "no_such_field"),
    ({"messages": [{"role": "user", "content": "hi", "mood": "sad"}]}, "messages.0.mood"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages.0.content.0.type"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"metadata": {"k": "v"}}, "metadata"),
])
def test_malformed_body_is_422_naming_the_param(http, override, param):
    assert_envelope(http.post("/v1/chat/completions", json=chat_body(**override)), 422, param=param)


def test_missing_model_is_422(http):
    body = chat_body()
    del body["model"]
    assert_envelope(http.post("/v1/chat/completions", json=body), 422, param="model")


def test_invalid_json_is_422(http):
    response = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_envelope(response, 422)


def test_assistant_message_with_function_call_needs_no_content(client):
    reply = client.chat.completions.create(model=MODEL_NAME, max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": "{}"}},
        {"role": "function", "name": "weather", "content": "sunny"},
    ])
    assert reply.usage.completion_tokens > 0


def test_unknown_model_is_404(http, client):
    assert_envelope(http.post("/v1/chat/completions", json=chat_body(model="gpt-9")), 404, "model", "model_not_found")
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(**chat_body(model="gpt-9"))
    assert caught.value.code == "model_not_found"


def test_prompt_longer_than_context_is_400(http, client):
    huge = "hello " * 20000
    error = assert_envelope(http.post("/v1/chat/completions", json=chat_body(huge)), 400, code="context_length_exceeded")
    assert "context" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**chat_body(huge))
    assert caught.value.code == "context_length_exceeded"


def test_prompt_plus_max_tokens_beyond_context_is_400(http):
    response = http.post("/v1/chat/completions", json=chat_body(max_tokens=10**6))
    assert_envelope(response, 400, code="context_length_exceeded")


def test_body_that_is_not_an_object_is_422(http):
    assert_envelope(http.post("/v1/chat/completions", json=["model"]), 422)


def test_typed_exceptions_of_the_official_client(client):
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(**chat_body(temperature=5))
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user"}])
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "wizard", "content": "hi"}])
    assert caught.value.param == "messages.0.role"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(**chat_body(metadata={"k": "v"}))
    assert caught.value.param == "metadata" and caught.value.code == "unsupported_parameter"


def test_unknown_route_and_method(http):
    assert_envelope(http.get("/v1/nothing-here"), 404, code="not_found")
    assert_envelope(http.get("/v1/chat/completions"), 405)


def test_server_keeps_serving_after_errors(http, client):
    http.post("/v1/chat/completions", content=b"]]", headers={"content-type": "application/json"})
    http.post("/v1/chat/completions", json=chat_body(model="nope"))
    http.post("/v1/chat/completions", json=chat_body("x " * 20000))
    reply = client.chat.completions.create(**chat_body(max_tokens=3))
    assert reply.usage.completion_tokens == 3


def test_client_leaving_a_non_stream_request_logs_no_internal_error(server, client):
    # Long enough (ends banned) that it is still running when the client gives up after 0.3 s.
    body = chat_body("Write a long essay about mountains.", max_tokens=400, logit_bias=NO_END)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=0.3)
    time.sleep(0.5)
    assert client.chat.completions.create(**chat_body(max_tokens=2)).usage.completion_tokens == 2
    assert "internal error" not in server.output() and "Traceback" not in server.output()
