"""Each family's own call format, served: a tiny random model of the family with its real chat template
(tests/api/family_models.py), forced to call. Its calls parse, validate, are the same streamed and
whole, carry the ids the template accepts, and round-trip: sent back with their results, the
template renders each call's name and arguments exactly as the model wrote them. Where the format's
marker is a special token, the model writes that token (its logprobs name it), not the text spelled
out."""
from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest

from rillet.api.call_formats import CALL_FORMATS, arguments_text
from rillet.api.prompt import render_prompt
from rillet.api.schemas import ChatCompletionRequest
from rillet.api.served_model import ServedModel
from rillet.model.loader import load_tokenizer_and_template
from tests.api.family_models import FAMILIES, write_family_model
from tests.api.test_tools import fold
from tests.api.helpers import stream_events
from tests.conftest import RunningServer

# No free strings but a short one: a random model's greedy strings would run to max_tokens.
FORECAST = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                             "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                             "alert": {"type": "boolean"}}, "required": ["unit", "days"]}
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}
SCHEMAS = {"get_forecast": FORECAST, "find_city": CITY}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": schema}} for name, schema in SCHEMAS.items()]
FORMATS = {f.name: f for f in CALL_FORMATS}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_server(request, tmp_path_factory):
    path = write_family_model(tmp_path_factory.mktemp("families") / f"{request.param}.gguf", request.param)
    server = RunningServer(["--model", str(path), "--served-model-name", request.param, "--kv-cache-tokens", "8192",
                            "--max-num-seqs", "4"])
    yield request.param, path, server
    server.stop()


def body(name: str, **fields) -> dict:
    return {"model": name, "messages": [{"role": "user", "content": "What is the forecast?"}], "max_tokens": 64,
            "temperature": 0, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, **fields}


def test_forced_calls_parse_validate_and_round_trip_through_the_template(family_server):
    name, path, server = family_server
    family = FAMILIES[name]
    call_format = FORMATS[family.call_format]
    where = "the chat template's own" if family.in_template else "the generic prompt's"
    assert f"tool calls in {family.call_format} format ({where}" in server.output()
    http = httpx.Client(base_url=server.base_url, timeout=120)
    whole = http.post("/v1/chat/completions", json=body(name, logprobs=True))
    assert whole.status_code == 200, whole.text
    reply = whole.json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert calls and (len(calls) == 1 or call_format.separator is not None)
    for call in calls:
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
        assert re.fullmatch(r"[a-zA-Z0-9]{9}" if call_format.nine_character_ids else r"call_[0-9a-f]{24}", call["id"])
    front = load_tokenizer_and_template(str(path))
    served = ServedModel(name, front.tokenizer, front.chat_template, 4096, 4, "fp", 0,
                         architecture=front.config.architecture)
    opening_token = [text for text in served.tool_calling.marker_tokens if call_format.opening.startswith(text)]
    if name in ("qwen2.5", "qwen3", "mistral-nemo", "mistral-small-3.2"):
        assert opening_token, "the vocabulary's <tool_call> or [TOOL_CALLS] is one token"
    if opening_token:  # written as the one token, not spelled out
        assert choice["logprobs"]["content"][0]["token"] == opening_token[0]
    _, chunks = stream_events(http, body(name))
    streamed = fold(chunks)["choices"][0]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in streamed["message"]["tool_calls"]] == \
        [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert streamed["finish_reason"] == "tool_calls"

    history = [{"role": "user", "content": "What is the forecast?"},
               {"role": "assistant", "content": None, "tool_calls": calls},
               *[{"role": "tool", "tool_call_id": c["id"], "content": "Sunny"} for c in calls]]
    after = http.post("/v1/chat/completions", json=body(name, messages=history, tool_choice="none", max_tokens=4))
    assert after.status_code == 200, after.text
    rendered = render_prompt(ChatCompletionRequest(model=name, messages=history, tools=TOOLS), None, served)
    for call in calls:
        arguments = call["function"]["arguments"]
        assert arguments == arguments_text(arguments)  # written as templates write JSON
        assert call_format.call_open + call["function"]["name"] in rendered and arguments in rendered
    assert call_format.calls_open in rendered
