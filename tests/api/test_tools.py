"""Tools and legacy functions against the real server, on the wire as OpenAI writes it: every
tool_choice, stream and non-stream, parallel calls, n > 1, calls and results carried back, a schema
the grammar library refuses. The default model knows nothing of tools; the grammar makes whatever
it writes a well-formed call where a call is due."""
from __future__ import annotations

import json

import jsonschema
import pytest

from tests.api.helpers import NO_END, chat_body, stream_events

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
LIGHT = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"], "additionalProperties": False}
SWITCH = [{"type": "function", "function": {"name": "switch_light", "parameters": LIGHT}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME, "switch_light": LIGHT}
QUESTION = "What is the weather in Paris?"
# SmolLM2's token for "<": the first character of a call, which "auto" leaves to the model. The bias
# holds for every token, so it is used with switch_light, whose arguments have no room for a "<".
CALL_START = {"44": 100}


def ask(http, stream: bool = False, **fields) -> dict:
    """A completion, the stream folded into the shape of a whole answer for stream=True."""
    body = chat_body(QUESTION, **{"max_tokens": 60, "tools": TOOLS, **fields})
    if not stream:
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()
    _, chunks = stream_events(http, body)
    return fold(chunks)


def fold(chunks: list[dict]) -> dict:
    """What a client accumulates from the stream: content, tool calls by index, finish reasons."""
    choices: dict[int, dict] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            choice = choices.setdefault(c["index"], {"content": None, "tool_calls": {}, "finish_reason": None})
            delta = c["delta"]
            if delta.get("content"):
                choice["content"] = (choice["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or []:
                entry = choice["tool_calls"].setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                if "id" in call:
                    assert entry["id"] is None and call["type"] == "function", "a call's id comes once, first"
                    entry["id"], entry["name"] = call["id"], call["function"]["name"]
                entry["arguments"] += call["function"].get("arguments", "")
            choice["finish_reason"] = c["finish_reason"] or choice["finish_reason"]
    return {"choices": [{"index": i, "finish_reason": c["finish_reason"], "message": {
        "content": c["content"], "tool_calls": [{"id": t["id"], "type": "function", "function": {
            "name": t["name"], "arguments": t["arguments"]}} for _, t in sorted(c["tool_calls"].items())] or None}}
        for i, c in sorted(choices.items())], "usage": chunks[-1]["usage"]}


def calls_of(reply: dict, index: int = 0) -> list[tuple[str, dict]]:
    message = reply["choices"][index]["message"]
    calls = message.get("tool_calls") or []
    assert len({call["id"] for call in calls}) == len(calls)
    assert all(call["id"].startswith("call_") and call["type"] == "function" for call in calls)
    return [(call["function"]["name"], json.loads(call["function"]["arguments"])) for call in calls]


def assert_valid_calls(calls: list[tuple[str, dict]]) -> None:
    for name, arguments in calls:
        jsonschema.validate(arguments, SCHEMAS[name])


@pytest.mark.parametrize("stream", [False, True])
def test_required_gives_calls_with_valid_arguments_and_no_content(http, stream):
    reply = ask(http, stream, tool_choice="required", parallel_tool_calls=False)
    choice = reply["choices"][0]
    assert choice["message"]["content"] is None and choice["finish_reason"] == "tool_calls"
    calls = calls_of(reply)
    assert len(calls) == 1
    assert_valid_calls(calls)


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_function_is_called_and_finishes_with_stop(http, stream):
    reply = ask(http, stream, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert reply["choices"][0]["finish_reason"] == "stop"
    [(name, arguments)] = calls_of(reply)
    assert name == "get_time"
    jsonschema.validate(arguments, TIME)


@pytest.mark.parametrize("stream", [False, True])
def test_none_answers_in_text_without_the_tools_in_the_prompt(http, stream):
    reply = ask(http, stream, tool_choice="none")
    message = reply["choices"][0]["message"]
    assert message["content"] and not message.get("tool_calls")
    plain = http.post("/v1/chat/completions", json=chat_body(QUESTION, max_tokens=60)).json()
    assert message["content"] == plain["choices"][0]["message"]["content"]
    assert reply["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_auto_lets_the_model_choose_text_or_calls_and_never_leaks_markup(http, stream):
    text = ask(http, stream)
    message = text["choices"][0]["message"]
    assert message["content"] and "<tool_call>" not in message["content"] and not message.get("tool_calls")
    assert text["choices"][0]["finish_reason"] in ("stop", "length")
    # Once the model writes the call's first character, the grammar holds it to a call.
    called = ask(http, stream, logit_bias=CALL_START, tools=SWITCH)
    assert called["choices"][0]["message"]["content"] is None
    assert called["choices"][0]["finish_reason"] == "tool_calls"
    assert_valid_calls(calls_of(called))


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_calls_come_as_separate_indices(http, stream):
    # With the end banned the model must follow one call with another: three within 90 tokens.
    reply = ask(http, stream, tool_choice="required", logit_bias=NO_END, max_tokens=90)
    message = reply["choices"][0]["message"]
    assert message["content"] is None and len(message["tool_calls"]) >= 3
    complete = message["tool_calls"][:-1]  # the last may be cut at max_tokens
    assert_valid_calls([(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in complete])
    assert reply["choices"][0]["finish_reason"] == "length"
    single = ask(http, stream, tool_choice="required", logit_bias=NO_END, parallel_tool_calls=False)
    assert len(single["choices"][0]["message"]["tool_calls"]) == 1
    assert single["choices"][0]["finish_reason"] == "tool_calls"


def test_each_of_n_choices_makes_its_own_calls(http):
    # No city named, and a high temperature: room for the choices to differ (a city may run to max_tokens).
    reply = ask(http, tool_choice="required", n=3, temperature=2.0, seed=3, parallel_tool_calls=False,
                messages=[{"role": "user", "content": "What is the weather like?"}])
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    for index, choice in enumerate(reply["choices"]):
        assert choice["finish_reason"] in ("tool_calls", "length") and len(choice["message"]["tool_calls"]) == 1
        if choice["finish_reason"] == "tool_calls":
            assert_valid_calls(calls_of(reply, index))
    assert len({c["message"]["tool_calls"][0]["function"]["arguments"] for c in reply["choices"]}) > 1


def test_calls_and_their_results_are_carried_back(http):
    first = ask(http, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first["choices"][0]["message"]["tool_calls"][0]
    conversation = [{"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": [{"type": "text", "text": "Sunny, 24 C"}]}]
    reply = http.post("/v1/chat/completions", json=chat_body(max_tokens=30, tools=TOOLS, tool_choice="none",
                                                             messages=conversation))
    assert reply.status_code == 200, reply.text
    without_result = http.post("/v1/chat/completions", json=chat_body(max_tokens=1, messages=conversation[:2]))
    assert reply.json()["usage"]["prompt_tokens"] > without_result.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_functions_answer_with_function_call(http, stream):
    functions = [tool["function"] for tool in TOOLS]
    body = chat_body(QUESTION, max_tokens=60, functions=functions, function_call={"name": "get_weather"})
    if stream:
        lines, chunks = stream_events(http, body)
        deltas = [c["delta"] for chunk in chunks for c in chunk["choices"]]
        calls = [d["function_call"] for d in deltas if "function_call" in d]
        assert calls[0] == {"name": "get_weather", "arguments": ""}
        assert all(set(c) == {"arguments"} for c in calls[1:]) and not any("tool_calls" in d for d in deltas)
        name, arguments, finish = "get_weather", "".join(c["arguments"] for c in calls), chunks[-1]["choices"][0]["finish_reason"]
    else:
        reply = http.post("/v1/chat/completions", json=body).json()
        message = reply["choices"][0]["message"]
        assert message["content"] is None and "tool_calls" not in message
        name, arguments = message["function_call"]["name"], message["function_call"]["arguments"]
        finish = reply["choices"][0]["finish_reason"]
    assert name == "get_weather" and finish == "stop"
    jsonschema.validate(json.loads(arguments), WEATHER)
    chosen = http.post("/v1/chat/completions", json=chat_body(QUESTION, max_tokens=60, logit_bias=CALL_START,
                                                              functions=[SWITCH[0]["function"]])).json()
    assert chosen["choices"][0]["finish_reason"] == "function_call"
    assert chosen["choices"][0]["message"]["function_call"]["name"] in SCHEMAS


def test_a_function_result_message_and_the_developer_role(http):
    with_developer = http.post("/v1/chat/completions", json=chat_body(max_tokens=5, messages=[
        {"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}])).json()
    with_system = http.post("/v1/chat/completions", json=chat_body(max_tokens=5, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}])).json()
    assert with_developer["usage"] == with_system["usage"]
    assert with_developer["choices"][0]["message"] == with_system["choices"][0]["message"]
    legacy = http.post("/v1/chat/completions", json=chat_body(max_tokens=5, messages=[
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": [{"type": "text", "text": "sunny"}]}]))
    assert legacy.status_code == 200, legacy.text


@pytest.mark.parametrize("field, value, param", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}], "tools.0.function.parameters"),
    ("functions", [{"name": "f", "parameters": {"type": "object", "not": {"required": ["a"]}}}], "functions.0.parameters"),
])
def test_a_schema_the_grammar_cannot_enforce_is_400_naming_it(http, field, value, param):
    response = http.post("/v1/chat/completions", json=chat_body(**{field: value}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "unsupported_schema") and "cannot be enforced" in error["message"]


@pytest.mark.parametrize("fields, param", [
    ({"tools": TOOLS, "functions": [TOOLS[0]["function"]]}, "functions"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice"),
    ({"tools": TOOLS + [TOOLS[0]]}, "tools"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools.0.function.parameters"),
])
def test_inconsistent_tool_fields_are_422(http, fields, param):
    response = http.post("/v1/chat/completions", json=chat_body(**fields))
    assert response.status_code == 422 and response.json()["error"]["param"] == param, response.text


def langchain_tools() -> list[dict]:
    """The tools of LangChain's standard integration tests, as LangChain writes them for OpenAI: their
    parameters name properties but say nothing of other keys."""
    from langchain_core.tools import tool
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from pydantic import BaseModel, Field

    class MagicFunctionSchema(BaseModel):
        input: int = Field(..., gt=-1000, lt=1000)

    @tool(args_schema=MagicFunctionSchema)
    def magic_function(_input: int) -> int:
        """Apply a magic function to an input."""
        return _input + 2

    @tool
    def magic_function_no_args() -> int:
        """Calculate a magic function."""
        return 5

    return [convert_to_openai_tool(t) for t in (magic_function, magic_function_no_args)]


def test_langchain_tool_shapes_get_no_keys_beyond_their_parameters(http):
    """The issue's case: 27 of 37 calls sampled at temperature 1 carried keys copied from the schema
    ({"input": 1, "type": "integer", "exclusiveMaximum": 1000, ...}). Generation closes the objects;
    the schema as sent still validates every answer."""
    tools = langchain_tools()
    assert all("additionalProperties" not in t["function"]["parameters"] for t in tools)
    schemas = {t["function"]["name"]: {**t["function"]["parameters"], "additionalProperties": False} for t in tools}
    question = [{"role": "user", "content": "What is the value of magic_function(3)?"}]
    calls = []
    for seed in (1, 2):
        reply = ask(http, tools=tools, tool_choice="required", n=10, temperature=1.0, seed=seed, max_tokens=40,
                    parallel_tool_calls=False, messages=question)
        for choice in reply["choices"]:
            assert choice["finish_reason"] == "tool_calls"
            calls += [(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]]
    assert len(calls) == 20
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), schemas[name])  # no key beyond the parameters
