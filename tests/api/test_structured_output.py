"""response_format against the real server: json_object gives one JSON object, json_schema an
object that validates, whatever the model would have written, with no blank outside strings;
a schema the grammar library cannot enforce is a 400 naming it."""
from __future__ import annotations

import concurrent.futures
import json

import jsonschema
import pytest

from tests.api.helpers import chat_body, stream_events, stream_text

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                 "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": False}},
    "required": ["name", "age", "pets", "address"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def content(http, **fields) -> tuple[str, str]:
    reply = http.post("/v1/chat/completions", json=chat_body("Describe a person.", **{"max_tokens": 120, **fields}))
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def assert_compact(text: str) -> None:
    """No whitespace outside strings: the JSON is written as json.dumps writes it compactly."""
    assert text == json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))


def test_json_object_is_one_json_object(http):
    ask = chat_body("Give a person's name and age as JSON.", max_tokens=120)
    reply = http.post("/v1/chat/completions", json={**ask, "response_format": {"type": "json_object"}}).json()
    text = reply["choices"][0]["message"]["content"]
    assert reply["choices"][0]["finish_reason"] == "stop" and isinstance(json.loads(text), dict)
    assert_compact(text)
    free = http.post("/v1/chat/completions", json=ask).json()["choices"][0]["message"]["content"]
    assert not free.startswith("{")  # left alone, the model writes prose


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(http, stream):
    if stream:
        _, chunks = stream_events(http, chat_body("Describe a person.", max_tokens=120, response_format=JSON_SCHEMA))
        text, finish_reason = stream_text(chunks), chunks[-1]["choices"][0]["finish_reason"]
    else:
        text, finish_reason = content(http, response_format=JSON_SCHEMA)
    assert finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)
    assert_compact(text)


def test_text_format_is_free_text(http):
    assert content(http, response_format={"type": "text"}) == content(http)


def test_one_hundred_sampled_answers_all_validate(http):
    """Sampled at temperature 1 with 100 seeds, in parallel: every answer that ends validates."""
    def sample(seed: int) -> tuple[str, str]:
        return content(http, response_format=JSON_SCHEMA, temperature=1.0, seed=seed, max_tokens=150)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(sample, range(100)))
    finished = [text for text, finish_reason in answers if finish_reason == "stop"]
    assert len(finished) >= 95, [a for a in answers if a[1] != "stop"][:3]
    for text in finished:
        jsonschema.validate(json.loads(text), PERSON)
        assert_compact(text)


@pytest.mark.parametrize("schema, says", [
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}}, "look-around"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if"),
])
def test_a_schema_the_grammar_cannot_enforce_is_400_naming_it(http, schema, says):
    response = http.post("/v1/chat/completions", json=chat_body(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("response_format.json_schema.schema", "unsupported_schema")
    assert says in error["message"]
