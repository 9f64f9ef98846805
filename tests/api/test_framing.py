"""The stream's framing in-process: each chunk event is the bytes json.dumps writes for the chunk
(its keys in OpenAI's order, compact, UTF-8 as it is), whether it took the content fast path or not;
and the SSE response sends each chunk, ends, stops on a disconnect and raises a stream's error."""
from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rillet.api.framing import ChunkEvents, EventStreamResponse
from rillet.api.output import Completion

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # no lone surrogates: not UTF-8


def completion(include_usage: bool) -> Completion:
    return Completion(request_id="chatcmpl-abc", created=1700000000, model="m/é \"q\"", fingerprint="fp_x",
                      n=2, num_prompt_tokens=7, include_usage=include_usage)


def expected(c: Completion, choices: list[dict], usage: dict | None = None) -> bytes:
    payload = {"id": c.request_id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
               "system_fingerprint": c.fingerprint, "choices": choices}
    if usage is not None or c.include_usage:
        payload["usage"] = usage
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def content(index: int, text: str) -> dict:
    return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}


@given(texts, st.integers(0, 127), st.booleans())
def test_a_content_chunk_is_what_json_dumps_writes(text, index, include_usage):
    c = completion(include_usage)
    assert ChunkEvents(c).event([content(index, text)]) == expected(c, [content(index, text)])


def test_every_kind_of_choice_and_the_usage_chunks_are_what_json_dumps_writes():
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    choices = [
        content(0, 'quote " backslash \\ newline \n tab \t nul \x00 é 猫 🙂 \u2028'),
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None},
        {"index": 1, "delta": {"role": "assistant", "content": None}, "logprobs": None, "finish_reason": None},
        {"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                               "function": {"name": "f", "arguments": ""}}]},
         "logprobs": None, "finish_reason": None},
        {"index": 0, "delta": {"content": "x"}, "logprobs": {"content": [{"token": "x", "logprob": -0.5}],
                                                             "refusal": None}, "finish_reason": None},
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"},
    ]
    for include_usage in (False, True):
        c = completion(include_usage)
        events = ChunkEvents(c)
        for choice in choices:
            assert events.event([choice]) == expected(c, [choice])
        assert events.event(choices) == expected(c, choices)
        assert events.event([], usage) == expected(c, [], usage)
        assert events.event(choices[-1:], usage) == expected(c, choices[-1:], usage)


class _Client:
    """An ASGI server's side of one connection, in-process: what was sent, and a disconnect on demand."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


def test_event_stream_sends_each_chunk_then_ends_and_stops_listening():
    client = _Client()

    async def events():
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    async def run():
        response = EventStreamResponse(events(), headers={"Cache-Control": "no-cache"})
        await asyncio.wait_for(response({"type": "http"}, client.receive, client.send), 5)

    asyncio.run(run())
    start, *bodies = client.sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert [(m["body"], m["more_body"]) for m in bodies] == [(b"data: 1\n\n", True), (b"data: 2\n\n", True),
                                                              (b"", False)]


def test_a_client_going_away_cancels_the_stream():
    client = _Client()
    closed = []

    async def events():
        try:
            yield b"data: 1\n\n"
            await asyncio.Event().wait()  # an engine that never answers again
        finally:
            closed.append(True)

    async def run():
        response = EventStreamResponse(events())
        serving = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        while len(client.sent) < 2:
            await asyncio.sleep(0)
        client.gone.set()
        await asyncio.wait_for(serving, 5)

    asyncio.run(run())
    assert closed == [True] and [m.get("body") for m in client.sent[1:]] == [b"data: 1\n\n"]


def test_an_error_in_the_stream_is_raised():
    async def events():
        yield b"data: 1\n\n"
        raise RuntimeError("broken")

    async def run():
        await EventStreamResponse(events())({"type": "http"}, _Client().receive, _Client().send)

    with pytest.raises(RuntimeError, match="broken"):
        asyncio.run(run())
