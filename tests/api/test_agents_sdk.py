"""The OpenAI Agents SDK's default model (OpenAIResponsesModel, over POST /v1/responses, from the
default OpenAIProvider) runs a tool to the end against the real server, plain and streamed: the model
calls the tool with valid arguments, the SDK runs it, and the run ends with its output. The default
model at temperature 0 calls the tool again after each result when the choice is left to it, so the
runs stop on the first tool's output (tool_use_behavior), as an agent whose tool gives the answer does."""
from __future__ import annotations

import asyncio

import agents
from openai import AsyncOpenAI

from tests.conftest import MODEL_NAME


def weather_agent(calls: list[str]):
    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city now."""
        calls.append(city)
        return f"Sunny, 24 C in {city}"

    return agents.Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                        model=MODEL_NAME, tool_use_behavior="stop_on_first_tool",
                        model_settings=agents.ModelSettings(temperature=0, max_tokens=80, tool_choice="required",
                                                            parallel_tool_calls=False))


def run_config(server) -> agents.RunConfig:
    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="test", max_retries=0, timeout=120)
    return agents.RunConfig(model_provider=agents.OpenAIProvider(openai_client=client), tracing_disabled=True)


def test_the_default_model_runs_a_tool_to_the_end(server):
    calls: list[str] = []

    async def run():
        return await agents.Runner.run(weather_agent(calls), "What is the weather in Paris?", max_turns=3,
                                       run_config=run_config(server))

    result = asyncio.run(run())
    assert calls == ["Paris"] and result.final_output == "Sunny, 24 C in Paris"
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item"]
    [response] = result.raw_responses
    assert response.response_id.startswith("resp_") and response.usage.output_tokens > 0


def test_the_default_model_runs_a_tool_to_the_end_streamed(server):
    calls: list[str] = []

    async def run():
        streamed = agents.Runner.run_streamed(weather_agent(calls), "What is the weather in Paris?", max_turns=3,
                                              run_config=run_config(server))
        kinds = [event.type async for event in streamed.stream_events()]
        return streamed, kinds

    streamed, kinds = asyncio.run(run())
    assert calls == ["Paris"] and streamed.final_output == "Sunny, 24 C in Paris"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
