"""Framing: a completion's shaped output on the wire, as one JSON object or as server-sent events.
The non-stream answer is the stream, gathered."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse

from rillet.api import sse
from rillet.api.access_log import RequestRecord
from rillet.api.errors import engine_error
from rillet.api.output import Completion
from rillet.engine.outputs import RequestOutput


async def stream_events(completion: Completion, outputs: AsyncIterator[RequestOutput],
                        record: RequestRecord) -> AsyncIterator[str]:
    async with contextlib.aclosing(outputs):
        try:
            yield sse.event(completion.chunk(completion.first_deltas()))
            async for output in outputs:
                events = [completion.chunk([choice]) for choice in completion.apply(output)]
                if output.finished and events and not completion.include_usage:
                    events[-1]["usage"] = completion.usage()
                if output.finished and completion.include_usage:
                    events.append(completion.chunk([], completion.usage()))
                yield "".join(sse.event(e) for e in events)
        except Exception as error:  # the headers are gone: report in-band, never a traceback
            api_error = engine_error(record.request_id, error)
            record.stream_error = api_error.kind.value.code
            yield sse.error_event(api_error)
        yield sse.DONE


async def gather(completion: Completion, outputs: AsyncIterator[RequestOutput]) -> None:
    async with contextlib.aclosing(outputs):
        async for output in outputs:
            completion.apply(output)


def whole_response(completion: Completion) -> JSONResponse:
    choices = [{"index": i, "message": completion.message(i),
                "logprobs": {"content": choice.logprobs, "refusal": None} if completion.logprob_formatter else None,
                "finish_reason": choice.finish_reason} for i, choice in enumerate(completion.choices)]
    return JSONResponse({
        "id": completion.request_id, "object": "chat.completion", "created": completion.created,
        "model": completion.model, "system_fingerprint": completion.fingerprint,
        "choices": choices, "usage": completion.usage(),
    })
