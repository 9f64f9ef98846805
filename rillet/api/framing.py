"""Framing: a completion's shaped output on the wire, as one JSON object or as server-sent events.
The non-stream answer is the stream, gathered."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from json.encoder import encode_basestring

from fastapi.responses import JSONResponse, StreamingResponse

from rillet.api import sse
from rillet.api.access_log import RequestRecord
from rillet.api.errors import engine_error
from rillet.api.output import Completion
from rillet.engine.outputs import RequestOutput


class ChunkEvents:
    """A completion's `chat.completion.chunk` events, as SSE bytes. The envelope every chunk repeats
    (id, object, created, model, system_fingerprint, and `"usage":null` when the request asked for
    usage) is encoded once per stream, and a plain content delta, most of a stream's chunks, by its
    text alone: the bytes are those json.dumps would write, in the same order."""

    def __init__(self, completion: Completion) -> None:
        envelope = sse.encode_json({
            "id": completion.request_id, "object": "chat.completion.chunk", "created": completion.created,
            "model": completion.model, "system_fingerprint": completion.fingerprint})
        self._head = b"data: " + envelope[:-1].encode() + b',"choices":['
        self._tail = b'],"usage":null}\n\n' if completion.include_usage else b"]}\n\n"

    def event(self, choices: list[dict], usage: dict | None = None) -> bytes:
        """One chunk of these stream choices; with `usage` when given."""
        body = b",".join([_choice_json(choice) for choice in choices])
        if usage is None:
            return self._head + body + self._tail
        return self._head + body + b'],"usage":' + sse.encode_json(usage).encode() + b"}\n\n"


def _choice_json(choice: dict) -> bytes:
    delta = choice["delta"]
    if len(delta) == 1 and choice["finish_reason"] is None and choice["logprobs"] is None:
        content = delta.get("content")
        if content.__class__ is str:
            return b'{"index":%d,"delta":{"content":%b},"logprobs":null,"finish_reason":null}' % (
                choice["index"], encode_basestring(content).encode())
    return sse.encode_json(choice).encode()


async def stream_events(completion: Completion, outputs: AsyncIterator[RequestOutput],
                        record: RequestRecord) -> AsyncIterator[bytes]:
    chunks = ChunkEvents(completion)
    async with contextlib.aclosing(outputs):
        try:
            yield chunks.event(completion.first_deltas())
            async for output in outputs:
                choices = completion.apply(output)
                if len(choices) == 1 and not output.finished:  # most outputs: one token of one choice
                    yield chunks.event(choices)
                    continue
                events = [chunks.event([choice]) for choice in choices]
                if output.finished:
                    usage = completion.usage()
                    if completion.include_usage:
                        events.append(chunks.event([], usage))
                    elif choices:
                        events[-1] = chunks.event(choices[-1:], usage)
                if events:  # text held back (a possible stop string) makes no event
                    yield b"".join(events)
        except Exception as error:  # the headers are gone: report in-band, never a traceback
            api_error = engine_error(record.request_id, error)
            record.stream_error = api_error.kind.value.code
            yield sse.error_event(api_error)
        yield sse.DONE


class EventStreamResponse(StreamingResponse):
    """starlette's StreamingResponse for a stream of bytes events, with two differences on the path
    every streamed token takes: the stream and the watch for the client's going away run as two
    asyncio tasks instead of in an anyio task group (one fewer frame per chunk and no cancel scope
    per request), and a chunk is sent as it comes, with no check that it is bytes. As there, the
    first to end cancels the other (a client gone cancels the stream, and so the request in the
    engine), and an exception of either is raised."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        # Nothing between the server and the client may hold the events back.
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def stream_response(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send) -> None:
        tasks = (asyncio.ensure_future(self.stream_response(send)),
                 asyncio.ensure_future(self.listen_for_disconnect(receive)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        if self.background is not None:
            await self.background()


def whole_response(completion: Completion) -> JSONResponse:
    choices = [{"index": i, "message": completion.message(i),
                "logprobs": {"content": choice.logprobs, "refusal": None} if completion.logprob_formatter else None,
                "finish_reason": choice.finish_reason} for i, choice in enumerate(completion.choices)]
    return JSONResponse({
        "id": completion.request_id, "object": "chat.completion", "created": completion.created,
        "model": completion.model, "system_fingerprint": completion.fingerprint,
        "choices": choices, "usage": completion.usage(),
    })
