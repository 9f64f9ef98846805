"""The Responses front's parts without a server: the events of each kind of output (text, calls, a
failure after the events began), and the shared stages' errors in the Responses request's terms."""
from __future__ import annotations

import pytest

from rillet.api.errors import APIError, ErrorKind
from rillet.api.output import Completion
from rillet.api.responses.convert import chat_request, in_request_terms
from rillet.api.responses.events import ResponseOutput, event_bytes
from rillet.api.responses.schemas import ResponsesRequest
from rillet.api.schemas import ChatCompletionRequest
from rillet.api.tools import tool_plan
from rillet.engine.outputs import ChoiceDelta, RequestOutput

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


def output_of(pieces: list[str], finish: str, tools: list | None = None) -> tuple[ResponseOutput, list[dict]]:
    body = ResponsesRequest(model="m", input="hi", tools=tools)
    chat, _ = chat_request(body)
    completion = Completion("resp_1", 0, "m", "fp", 1, 7, tool_plan(chat))
    output = ResponseOutput("resp_1", "m", body, completion)
    events = output.started()
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        delta = ChoiceDelta(0, piece, [i], finish if last else None)
        events += output.apply(completion.update(RequestOutput("resp_1", 7, [delta], finished=last)))
    return output, events + output.finished()


def test_text_is_one_message_item_told_part_by_part():
    output, events = output_of(["Hel", "lo"], "stop")
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[2]["item"]["content"] == [] and events[-2]["item"]["content"][0]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["status"] == "completed"
    assert final["usage"] == {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 9}
    assert event_bytes(events[4]).startswith(b"event: response.output_text.delta\ndata: {")


def test_calls_are_function_call_items_and_a_cut_answer_is_incomplete():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "get_we'
    output, events = output_of([text[:30], text[30:]], "length", TOOLS)
    kinds = [e["type"] for e in events]
    assert kinds.count("response.output_item.added") == 1  # the second call's name never completed
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.incomplete"
    [call] = events[-1]["response"]["output"]
    assert (call["type"], call["name"], call["arguments"], call["status"]) == \
        ("function_call", "get_weather", "{}", "incomplete")
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_after_the_events_began_is_an_error_event_then_response_failed():
    output, _ = output_of(["Hel"], "stop")
    events = output.failed(APIError(ErrorKind.ENGINE_UNAVAILABLE, "the engine died"))
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "engine_unavailable"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "the engine died"}


@pytest.mark.parametrize("param, renamed", [
    ("messages", "input"),
    ("messages.0", "instructions"),
    ("messages.1.content", "input.0.content"),
    ("messages.3.tool_call_id", "input.3.tool_call_id"),
    ("tools.2.function.parameters", "tools.2.parameters"),
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format", "text.format"),
    ("max_completion_tokens", "max_output_tokens"),
    ("tool_choice", "tool_choice"),
])
def test_a_stage_error_names_the_field_the_client_sent(param, renamed):
    body = ResponsesRequest(model="m", instructions="Be brief.", input=[
        {"role": "user", "content": "hi"}, {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "x"}])
    chat, sources = chat_request(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool"]
    assert len(chat.messages[2].tool_calls) == 2  # calls in a row are one assistant turn
    error = in_request_terms(APIError(ErrorKind.INVALID_REQUEST, f"{param}: bad", param), sources)
    assert (error.param, error.message) == (renamed, f"{renamed}: bad")


def test_the_chat_request_carries_every_setting():
    body = ResponsesRequest(model="m", input="hi", temperature=0.5, top_p=0.9, max_output_tokens=9, user="u",
                            tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"},
                            parallel_tool_calls=False, text={"format": {"type": "json_schema", "name": "x",
                                                                        "schema": {"type": "object"}}})
    chat, _ = chat_request(body)
    assert isinstance(chat, ChatCompletionRequest)
    assert (chat.temperature, chat.top_p, chat.max_completion_tokens, chat.user) == (0.5, 0.9, 9, "u")
    assert chat.tool_choice.function.name == "get_weather" and chat.parallel_tool_calls is False
    assert chat.response_format.json_schema.schema_ == {"type": "object"}
