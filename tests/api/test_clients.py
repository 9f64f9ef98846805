"""The clients people use, end to end against the real server: the official SDK's structured-output
and tool helpers (parse with a pydantic model, pydantic_function_tool, the stream helpers, the legacy
functions form) and LangChain's ChatOpenAI (bind_tools, with_structured_output)."""
from __future__ import annotations

from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import MODEL_NAME


class Pet(BaseModel):
    name: str = Field(max_length=20)
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)


class GetWeather(BaseModel):
    """The weather in a city now."""
    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


def test_sdk_parse_returns_the_pydantic_model(client):
    completion = client.chat.completions.parse(model=MODEL_NAME, temperature=0, max_tokens=80, response_format=Pet,
                                               messages=[{"role": "user", "content": "Describe a pet."}])
    message = completion.choices[0].message
    assert isinstance(message.parsed, Pet) and message.parsed.kind in ("cat", "dog", "fish")
    assert completion.choices[0].finish_reason == "stop"


def test_sdk_pydantic_function_tool_parses_its_arguments(client):
    completion = client.chat.completions.parse(
        model=MODEL_NAME, temperature=0, max_tokens=80, tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required", parallel_tool_calls=False,
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}])
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "GetWeather" and isinstance(call.function.parsed_arguments, GetWeather)
    assert completion.choices[0].finish_reason == "tool_calls"


def test_sdk_stream_helper_accumulates_streamed_tool_calls(client):
    events = []
    with client.chat.completions.stream(
            model=MODEL_NAME, temperature=0, max_tokens=80, tools=[openai.pydantic_function_tool(GetWeather)],
            tool_choice={"type": "function", "function": {"name": "GetWeather"}},
            messages=[{"role": "user", "content": "What is the weather in Oslo?"}]) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert "tool_calls.function.arguments.delta" in events and events.count("tool_calls.function.arguments.done") == 1
    assert final.choices[0].message.content is None


def test_sdk_stream_helper_parses_a_streamed_response_format(client):
    with client.chat.completions.stream(model=MODEL_NAME, temperature=0, max_tokens=80, response_format=Pet,
                                        messages=[{"role": "user", "content": "Describe a pet."}]) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Pet)


def test_sdk_legacy_functions(client):
    completion = client.chat.completions.create(
        model=MODEL_NAME, temperature=0, max_tokens=80, function_call={"name": "get_weather"},
        functions=[{"name": "get_weather", "parameters": GetWeather.model_json_schema()}],
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}])
    call = completion.choices[0].message.function_call
    assert call.name == "get_weather" and GetWeather.model_validate_json(call.arguments)


@pytest.fixture(scope="module")
def chat_model(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(model=MODEL_NAME, base_url=f"{server.base_url}/v1", api_key="unused",
                                       temperature=0, max_tokens=80, max_retries=0)


def test_langchain_bind_tools(chat_model):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """The weather in a city now."""
        return "sunny"

    reply = chat_model.bind_tools([get_weather], tool_choice="get_weather", strict=True).invoke(
        "What is the weather in Oslo?")
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "unit"}
    assert call["args"]["unit"] in ("celsius", "fahrenheit") and call["id"].startswith("call_")
    # The call and its result carried back, as an agent loop does.
    from langchain_core.messages import HumanMessage, ToolMessage

    follow_up = chat_model.bind_tools([get_weather]).invoke([
        HumanMessage("What is the weather in Oslo?"), reply,
        ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])])
    assert follow_up.content or follow_up.tool_calls


def test_langchain_with_structured_output(chat_model):
    pet = chat_model.with_structured_output(Pet).invoke("Describe a pet.")
    assert isinstance(pet, Pet)
