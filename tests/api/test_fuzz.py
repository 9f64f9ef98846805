"""Schema fuzzing of POST /v1/chat/completions: whatever the body, the answer is never a 500, and
every error comes in OpenAI's envelope. In-process over the stub engine, so thousands of bodies
take seconds; the API layer (parsing, validation, sampling parameters, context checks, admission,
rate limits, the stream) is the real one."""
from __future__ import annotations

import functools
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rillet.api.schemas import ChatCompletionRequest
from tests.api.stub_app import stub_app

FIELDS = sorted(ChatCompletionRequest.model_fields)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# No subnormals: a library built with -ffast-math, loaded earlier in the same process, may have
# switched them off, and hypothesis refuses to generate them then.
floats = functools.partial(st.floats, allow_nan=False, allow_infinity=False, allow_subnormal=False)
edge_numbers = st.one_of(st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                         st.sampled_from([0, 1, -1, 2, 64, 65, 128, 129, 2 ** 31, 2 ** 63, -(2 ** 63)]),
                         floats(), st.sampled_from([0.0, 1e-300, 2.0, 100.0]))
scalars = st.one_of(st.none(), st.booleans(), edge_numbers, st.text(max_size=20),
                    st.sampled_from(["stub", "user", "system", "assistant", "text", "auto", "none"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner,
                                                 max_size=4)), max_leaves=12)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "function", "tool", "bot"])},
    optional={"content": st.one_of(st.text(max_size=40), st.none(), json_values,
                                   st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}),
                                            max_size=3)),
              "name": scalars, "function_call": json_values}), max_size=4)
bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.just("stub"), scalars), "messages": st.one_of(messages, json_values)},
    optional={field: json_values for field in FIELDS if field not in ("model", "messages")})
# Values inside each field's bounds (the bounds themselves included), so that bodies get through
# validation into the sampling parameters, the context check, the engine and the stream.
plausible = {
    "temperature": floats(0, 2), "top_p": floats(0, 1), "n": st.integers(1, 4),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
    "max_tokens": st.integers(1, 70), "max_completion_tokens": st.integers(1, 70),
    "presence_penalty": floats(-2, 2), "frequency_penalty": floats(-2, 2),
    "logit_bias": st.dictionaries(st.integers(0, 99).map(str), floats(-100, 100), max_size=3),
    "user": st.text(max_size=10), "seed": st.integers(-(2 ** 70), 2 ** 70),
    "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20),
}
plausible_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=60)}), min_size=1, max_size=4)
plausible_bodies = st.fixed_dictionaries({"model": st.just("stub"), "messages": plausible_messages}, optional=plausible)


@pytest.fixture(scope="module")
def http():
    with TestClient(stub_app(), raise_server_exceptions=False) as client:
        yield client


def assert_answered(response) -> None:
    assert response.status_code != 500 and response.status_code < 600, response.text
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert error["code"] is None or isinstance(error["code"], str)
        assert error["param"] is None or isinstance(error["param"], str)
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
        assert '"error"' not in response.text, response.text
    else:
        assert response.json()["object"] == "chat.completion"


@SETTINGS
@given(body=bodies)
def test_bodies_shaped_like_the_schema_never_get_a_500(http, body):
    assert_answered(http.post("/v1/chat/completions", json=body))


@SETTINGS
@given(body=plausible_bodies)
def test_plausible_bodies_never_get_a_500(http, body):
    assert_answered(http.post("/v1/chat/completions", json=body))


@SETTINGS
@given(body=json_values)
def test_any_json_never_gets_a_500(http, body):
    assert_answered(http.post("/v1/chat/completions", json=body))


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     bodies.map(lambda b: json.dumps(b).encode()[:-1])))
def test_any_bytes_never_get_a_500(http, raw):
    assert_answered(http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}))
