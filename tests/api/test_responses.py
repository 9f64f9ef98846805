"""POST /v1/responses against the real server, with the official SDK's responses.create and
responses.stream and raw HTTP: the same stages as chat completions (the same answer and usage for
the same conversation), input items and function calls carried back, typed events, structured
output, incompleteness, and OpenAI's errors naming the Responses fields."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.api.helpers import chat_body
from tests.conftest import MODEL_NAME

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city now", "parameters": WEATHER}]
QUESTION = "What is the weather in Paris?"


def create(client, **fields):
    return client.responses.create(**{"model": MODEL_NAME, "temperature": 0, "max_output_tokens": 40, **fields})


def test_a_text_answer_is_the_chat_answer_of_the_same_conversation(client, http):
    response = create(client, instructions="You are terse.", max_output_tokens=80, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Name three "}, {"type": "input_text",
                                                                                   "text": "colors."}]}])
    chat = http.post("/v1/chat/completions", json=chat_body(max_tokens=80, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}])).json()
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_") and response.output_text == chat["choices"][0]["message"]["content"]
    assert response.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert response.usage.output_tokens == chat["usage"]["completion_tokens"]
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert (response.instructions, response.max_output_tokens, response.temperature) == ("You are terse.", 80, 0.0)
    assert response.store is False and response.text.format.type == "text" and response.tools == []


def test_a_string_input_is_one_user_message(client, http):
    response = create(client, input="Name three colors.")
    chat = http.post("/v1/chat/completions", json=chat_body(max_tokens=40)).json()
    assert response.output_text == chat["choices"][0]["message"]["content"]


def test_the_stream_has_openais_typed_events_and_gathers_to_the_whole_response(client):
    whole = create(client, input="Name three colors.")
    with client.responses.stream(model=MODEL_NAME, input="Name three colors.", temperature=0,
                                 max_output_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == final.output_text == whole.output_text
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert final.usage.output_tokens == whole.usage.output_tokens and final.status == "completed"


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_is_an_output_item_with_its_arguments(client, stream):
    fields = dict(input=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    if stream:
        with client.responses.stream(model=MODEL_NAME, temperature=0, max_output_tokens=40, **fields) as events:
            seen = list(events)
            response = events.get_final_response()
        deltas = "".join(e.delta for e in seen if e.type == "response.function_call_arguments.delta")
        [done] = [e for e in seen if e.type == "response.function_call_arguments.done"]
        assert deltas == done.arguments == response.output[0].arguments
        assert [e.type for e in seen][-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                                              "response.completed"]
    else:
        response = create(client, **fields)
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), {**WEATHER, "additionalProperties": False})
    assert response.status == "completed" and response.tool_choice == "required"
    assert response.tools[0].name == "get_weather" and response.parallel_tool_calls is False


def test_calls_and_their_outputs_are_carried_back_as_the_chat_api_carries_them(client, http):
    first = create(client, input=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    [call] = first.output
    items = [{"role": "user", "content": QUESTION}, call.model_dump(exclude_none=True),
             {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}]
    after = create(client, input=items, tools=TOOLS, tool_choice="none")
    chat = http.post("/v1/chat/completions", json=chat_body(max_tokens=40, tools=[
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                          "parameters": WEATHER}}], tool_choice="none", messages=[
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 24 C"}])).json()
    assert after.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert after.output_text == chat["choices"][0]["message"]["content"]


def test_text_format_json_schema_answers_valid_json(client):
    schema = {"type": "object", "properties": {"color": {"type": "string", "maxLength": 12}}, "required": ["color"]}
    response = create(client, input="Name a color.", max_output_tokens=60,
                      text={"format": {"type": "json_schema", "name": "color", "schema": schema}})
    jsonschema.validate(json.loads(response.output_text), {**schema, "additionalProperties": False})
    assert response.text.format.type == "json_schema" and response.text.format.name == "color"


def test_an_answer_cut_at_max_output_tokens_is_incomplete(client):
    response = create(client, input="Tell me a long story.", max_output_tokens=5)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.usage.output_tokens == 5
    with client.responses.stream(model=MODEL_NAME, input="Tell me a long story.", max_output_tokens=5) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"


@pytest.mark.parametrize("fields, status, code, param", [
    ({"store": True}, 400, "stored_responses_unsupported", "store"),
    ({"previous_response_id": "resp_123"}, 400, "stored_responses_unsupported", "previous_response_id"),
    ({"include": ["message.output_text.logprobs"]}, 422, "unsupported_parameter", "include"),
    ({"truncation": "auto"}, 422, "unsupported_parameter", "truncation"),
    ({"model": "gpt-4o"}, 404, "model_not_found", "model"),
    ({"tool_choice": "required"}, 422, None, "tool_choice"),
    ({"tools": [{"type": "web_search"}]}, 422, None, "tools.0.type"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "string", "format": "not-a-format-anyone-knows"}}}}]}, 400, "unsupported_schema",
     "tools.0.parameters"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}]}, 422, None, "tools.0.parameters"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object", "properties": {
        "a": {"type": "string", "format": "not-a-format-anyone-knows"}}}}}}, 400, "unsupported_schema",
     "text.format.schema"),
    ({"input": [{"role": "tool", "content": "x"}]}, 422, None, "input.0.role"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, 422, None, "input.0.call_id"),
    ({"input": "a " * 40000}, 400, "context_length_exceeded", "input"),
    ({"max_output_tokens": 10 ** 6}, 400, "context_length_exceeded", "input"),
    ({"instructions": "Be brief.", "input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": []},
                                               {"type": "reasoning", "summary": []}]}, 422, None, "input.2"),
])
def test_errors_are_openais_naming_the_responses_field(http, fields, status, code, param):
    response = http.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi", "max_output_tokens": 4, **fields})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert error["type"] == "invalid_request_error" and error["message"]


def test_the_sdk_raises_its_own_error_types(client):
    with pytest.raises(openai.BadRequestError) as raised:
        create(client, input="hi", previous_response_id="resp_123")
    assert "previous_response_id" in str(raised.value)
