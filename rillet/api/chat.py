"""POST /v1/chat/completions: one pipeline for both modes; non-stream gathers what stream sends."""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rillet.api import sse
from rillet.api.access_log import RequestRecord, record_of
from rillet.api.auth import api_key_of, check_model_allowed
from rillet.api.errors import APIError, ErrorKind, internal_error
from rillet.api.logprobs import LogprobFormatter
from rillet.api.metrics import ApiMetrics
from rillet.api.rate_limit import Reservation
from rillet.api.sampling import check_supported, sampling_params, template_messages
from rillet.api.schemas import ChatCompletionRequest
from rillet.api.served_model import ServedModel
from rillet.engine.engine_client import EngineDeadError
from rillet.engine.errors import PromptTooLongError, RequestFailedError, RequestRejectedError
from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.model.errors import ChatTemplateError

router = APIRouter()
T = TypeVar("T")


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
    record = record_of(request)
    record.model, record.user = body.model, body.user
    check_supported(body)
    key = api_key_of(request)
    check_model_allowed(key, body.model)
    if body.model != served.name:
        raise APIError(ErrorKind.MODEL_NOT_FOUND, f"the model {body.model!r} does not exist", "model")
    messages = template_messages(body)
    params = sampling_params(body, served.tokenizer.vocab_size)
    if params.n > served.max_num_seqs:
        raise APIError(ErrorKind.INVALID_REQUEST, f"n is {params.n}, but this server runs at most "
                       f"{served.max_num_seqs} sequences at once", "n")
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
    record.completion_id, record.prompt_tokens = completion.request_id, len(prompt)
    reservation = request.app.state.rate_limiter.reserve(
        key, _tokens_to_reserve(len(prompt), params, served.max_context_len))
    outputs = engine.generate(completion.request_id, prompt, params)
    first = await _admit(request, outputs, len(prompt), reservation, record)
    if first is _DISCONNECTED:
        return JSONResponse({}, status_code=499)
    outputs = _observed(first, outputs, completion, record, request.app.state.metrics, reservation)
    if body.stream:
        return StreamingResponse(_stream(completion, outputs, record), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _respond_whole(completion, outputs, request, record)


async def _admit(request: Request, outputs: AsyncIterator[RequestOutput], num_prompt_tokens: int,
                 reservation: Reservation, record: RequestRecord) -> RequestOutput | object:
    """Waits in the admission queue for the first output. A request that never gets one keeps
    nothing of its rate-limit reservation."""
    try:
        first = await _unless_disconnected(request, request.app.state.admission.first_output(outputs, num_prompt_tokens))
    except BaseException as error:
        reservation.settle(0)
        if isinstance(error, Exception):
            raise _engine_error(record.request_id, error) from None
        raise
    if first is _DISCONNECTED:
        reservation.settle(0)
    else:
        record.on_output(request.app.state.metrics)
    return first


def _tokens_to_reserve(num_prompt_tokens: int, params: SamplingParams, max_context_len: int) -> int:
    """The most a request can use: its prompt, and for each choice max_tokens or else the rest of the context."""
    return num_prompt_tokens + params.n * (params.max_tokens or max_context_len - num_prompt_tokens)


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


async def _observed(first: RequestOutput, outputs: AsyncIterator[RequestOutput], completion: Completion,
                    record: RequestRecord, metrics: ApiMetrics, reservation: Reservation) -> AsyncIterator[RequestOutput]:
    """The request's outputs, first one included; times each, and settles the rate limit at the end."""
    finished = first.finished
    try:
        async with contextlib.aclosing(outputs):
            yield first
            async for output in outputs:
                record.on_output(metrics)
                finished = output.finished
                yield output
    except (GeneratorExit, asyncio.CancelledError):
        record.cancelled = not finished
        raise
    finally:
        record.completion_tokens = completion.num_completion_tokens
        record.finish_reasons = completion.finish_reasons
        reservation.settle(completion.num_prompt_tokens + completion.num_completion_tokens)


async def _stream(completion: Completion, outputs: AsyncIterator[RequestOutput],
                  record: RequestRecord) -> AsyncIterator[str]:
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
        except Exception as error:  # the headers are gone: report in-band, never a traceback
            api_error = _engine_error(record.request_id, error)
            record.stream_error = api_error.kind.value.code
            yield sse.error_event(api_error)
        yield sse.DONE


async def _respond_whole(completion: Completion, outputs: AsyncIterator[RequestOutput], request: Request,
                         record: RequestRecord):
    try:
        gathered = await _unless_disconnected(request, _gather(completion, outputs))
    except Exception as error:
        raise _engine_error(record.request_id, error) from None
    if gathered is _DISCONNECTED:
        return JSONResponse({}, status_code=499)
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


_DISCONNECTED = object()


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | object:
    """Runs `work` until it ends or the client goes away; then it is cancelled (which aborts
    the request in the engine) and _DISCONNECTED returned."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # cancel() only asks; the task ends on its next turn
    return _DISCONNECTED if task.cancelled() else task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _engine_error(request_id: str, error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineDeadError):
        return APIError(ErrorKind.ENGINE_UNAVAILABLE, str(error))
    if isinstance(error, PromptTooLongError):
        return APIError(ErrorKind.CONTEXT_LENGTH_EXCEEDED, str(error), error.param)
    if isinstance(error, RequestRejectedError):
        return APIError(ErrorKind.INVALID_REQUEST, str(error), error.param)
    if isinstance(error, RequestFailedError):  # the engine process logged its traceback
        return internal_error(request_id, error, with_traceback=False)
    return internal_error(request_id, error)
