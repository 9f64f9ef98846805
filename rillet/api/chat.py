"""POST /v1/chat/completions: one pipeline for both modes; non-stream gathers what stream sends."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rillet.api import sse
from rillet.api.auth import api_key_of, check_model_allowed
from rillet.api.errors import APIError, ErrorKind, internal_error
from rillet.api.logprobs import LogprobFormatter
from rillet.api.sampling import check_supported, sampling_params, template_messages
from rillet.api.schemas import ChatCompletionRequest
from rillet.api.served_model import ServedModel
from rillet.engine.async_engine import EngineDeadError
from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.model.errors import ChatTemplateError

log = logging.getLogger("rillet.api")
router = APIRouter()


@dataclass(slots=True)
class Completion:
    """What one request has produced so far, and the fields every chunk repeats."""
    request_id: str
    created: int
    model: str
    fingerprint: str
    n: int
    num_prompt_tokens: int
    include_usage: bool = False
    num_completion_tokens: int = 0
    texts: list[list[str]] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    # Set when the request asked for logprobs: each choice's entries so far.
    logprob_formatter: LogprobFormatter | None = None
    logprobs: list[list[dict]] = field(default_factory=list)

    def usage(self) -> dict:
        return {"prompt_tokens": self.num_prompt_tokens, "completion_tokens": self.num_completion_tokens,
                "total_tokens": self.num_prompt_tokens + self.num_completion_tokens}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        payload = {"id": self.request_id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.model, "system_fingerprint": self.fingerprint, "choices": choices}
        if usage is not None or self.include_usage:
            payload["usage"] = usage
        return payload


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    served: ServedModel = request.app.state.served
    engine = request.app.state.engine
    check_supported(body)
    check_model_allowed(api_key_of(request), body.model)
    if body.model != served.name:
        raise APIError(ErrorKind.MODEL_NOT_FOUND, f"the model {body.model!r} does not exist", "model")
    messages = template_messages(body)
    params = sampling_params(body, served.tokenizer.vocab_size)
    prompt = await asyncio.to_thread(_encode_prompt, served, messages)
    _check_context(len(prompt), params, served.max_context_len)
    if not engine.is_alive:
        raise APIError(ErrorKind.ENGINE_UNAVAILABLE, "the engine is not running")
    completion = Completion(
        request_id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=served.name,
        fingerprint=served.fingerprint, n=params.n, num_prompt_tokens=len(prompt),
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        texts=[[] for _ in range(params.n)], finish_reasons=[None] * params.n,
        logprob_formatter=request.app.state.logprob_formatter if params.logprobs is not None else None,
        logprobs=[[] for _ in range(params.n)],
    )
    request.state.request_id = completion.request_id
    if body.user:
        log.info("request %s from user %r", completion.request_id, body.user)
    outputs = engine.generate(completion.request_id, prompt, params)
    if body.stream:
        return StreamingResponse(_stream(completion, outputs), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _respond_whole(completion, outputs, request)


def _encode_prompt(served: ServedModel, messages: list[dict]) -> list[int]:
    try:
        return served.tokenizer.encode(served.chat_template.render(messages, add_generation_prompt=True))
    except ChatTemplateError as error:
        raise APIError(ErrorKind.INVALID_REQUEST, str(error), "messages") from None


def _check_context(num_prompt_tokens: int, params: SamplingParams, max_context_len: int) -> None:
    wanted = num_prompt_tokens + (params.max_tokens or 1)
    if wanted > max_context_len:
        asked = f" plus max_tokens {params.max_tokens}" if params.max_tokens else ""
        raise APIError(ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                       f"this model's context holds {max_context_len} tokens; the messages have "
                       f"{num_prompt_tokens}{asked}", "messages")


def _apply(completion: Completion, output: RequestOutput) -> list[dict]:
    """Records one engine output; returns its stream choices: content pieces, then finishes."""
    choices = []
    for delta in output.deltas:
        completion.num_completion_tokens += len(delta.token_ids)
        logprobs = None
        if delta.logprobs and completion.logprob_formatter is not None:
            entries = [completion.logprob_formatter.entry(lp) for lp in delta.logprobs]
            completion.logprobs[delta.index].extend(entries)
            logprobs = {"content": entries, "refusal": None}
        if delta.text or logprobs:
            completion.texts[delta.index].append(delta.text)
            choices.append({"index": delta.index, "delta": {"content": delta.text}, "logprobs": logprobs,
                            "finish_reason": None})
        if delta.finish_reason is not None:
            completion.finish_reasons[delta.index] = delta.finish_reason
            choices.append({"index": delta.index, "delta": {}, "logprobs": None,
                            "finish_reason": delta.finish_reason})
    return choices


async def _stream(completion: Completion, outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[str]:
    async with contextlib.aclosing(outputs):
        try:
            roles = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(completion.n)]
            yield sse.event(completion.chunk(roles))
            async for output in outputs:
                events = [completion.chunk([choice]) for choice in _apply(completion, output)]
                if output.finished and events and not completion.include_usage:
                    events[-1]["usage"] = completion.usage()
                if output.finished and completion.include_usage:
                    events.append(completion.chunk([], completion.usage()))
                yield "".join(sse.event(e) for e in events)
        except APIError as error:
            yield sse.error_event(error)
        except Exception as error:  # the headers are gone: report in-band, never a traceback
            yield sse.error_event(_engine_error(completion.request_id, error))
        yield sse.DONE


async def _respond_whole(completion: Completion, outputs: AsyncIterator[RequestOutput], request: Request):
    gather = asyncio.ensure_future(_gather(completion, outputs))
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({gather, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not gather.done():
            gather.cancel()  # the client went away: closing the iterator aborts the request
            await asyncio.wait({gather})  # cancel() only asks; the task ends on its next turn
    if gather.cancelled():
        return JSONResponse({}, status_code=499)
    error = gather.exception()
    if error is not None:
        raise _engine_error(completion.request_id, error)
    choices = [{"index": i, "message": {"role": "assistant", "content": "".join(completion.texts[i])},
                "logprobs": {"content": completion.logprobs[i], "refusal": None} if completion.logprob_formatter
                else None, "finish_reason": completion.finish_reasons[i]} for i in range(completion.n)]
    return JSONResponse({
        "id": completion.request_id, "object": "chat.completion", "created": completion.created,
        "model": completion.model, "system_fingerprint": completion.fingerprint,
        "choices": choices, "usage": completion.usage(),
    })


async def _gather(completion: Completion, outputs: AsyncIterator[RequestOutput]) -> None:
    async with contextlib.aclosing(outputs):
        async for output in outputs:
            _apply(completion, output)


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _engine_error(request_id: str, error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineDeadError):
        return APIError(ErrorKind.ENGINE_UNAVAILABLE, str(error))
    return internal_error(request_id, error)
