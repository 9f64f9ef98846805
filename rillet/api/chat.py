"""POST /v1/chat/completions: the way through the API layer, stage by stage.

parse and validate (schemas.py, sampling.py, tools.py) → render the prompt (prompt.py) and the
answer's grammar (structured_output.py) → admit (rate_limit.py, admission.py) → generate (the
engine client) → shape the output (output.py) → frame it (framing.py). One pipeline serves both
modes: the non-stream answer is the stream, gathered.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rillet.api.access_log import RequestRecord, record_of
from rillet.api.auth import api_key_of, check_model_allowed
from rillet.api.errors import APIError, ErrorKind, engine_error
from rillet.api.framing import (
    EventStreamResponse,
    gather,
    stream_events,
    whole_response,
)
from rillet.api.metrics import ApiMetrics
from rillet.api.output import Completion
from rillet.api.admission import AdmissionLimits
from rillet.api.prompt import check_prompt_size, render_prompt
from rillet.api.rate_limit import Reservation
from rillet.api.sampling import check_supported, sampling_params
from rillet.api.schemas import ChatCompletionRequest
from rillet.api.served_model import ServedModel
from rillet.api.shares import Share
from rillet.api.structured_output import answer_grammar
from rillet.api.tools import ToolPlan, tool_plan
from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams

router = APIRouter()
T = TypeVar("T")


@dataclass(slots=True)
class Plan:
    """A validated request, ready for the engine."""
    prompt_token_ids: list[int]
    params: SamplingParams
    tools: ToolPlan | None


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    served: ServedModel = request.app.state.served
    engine = request.app.state.engine
    record = record_of(request)
    record.model, record.user = body.model, body.user
    key = api_key_of(request)
    check_model_allowed(key, body.model)
    if body.model != served.name:
        raise APIError(ErrorKind.MODEL_NOT_FOUND, f"the model {body.model!r} does not exist", "model")
    plan = await _plan(body, request)
    prompt, params = plan.prompt_token_ids, plan.params
    if not engine.is_alive:
        raise APIError(ErrorKind.ENGINE_UNAVAILABLE, "the engine is not running")
    completion = Completion(
        request_id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=served.name,
        fingerprint=served.fingerprint, n=params.n, num_prompt_tokens=len(prompt), tools=plan.tools,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        logprob_formatter=request.app.state.logprob_formatter if params.logprobs is not None else None)
    record.completion_id, record.prompt_tokens = completion.request_id, len(prompt)
    reservation = request.app.state.rate_limiter.reserve(
        key, _tokens_to_reserve(len(prompt), params, served.max_context_len))
    share = request.app.state.admission.shares.claim(key.key_id if key else None, params.n)
    outputs = engine.generate(completion.request_id, prompt, params)
    first = await _admit(request, outputs, len(prompt), reservation, share, record)
    if first is _DISCONNECTED:
        return JSONResponse({}, status_code=499)
    outputs = _observed(first, outputs, completion, record, request.app.state.metrics, reservation, share)
    if body.stream:
        return EventStreamResponse(stream_events(completion, outputs, record),
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        gathered = await _unless_disconnected(request, gather(completion, outputs))
    except Exception as error:
        raise engine_error(record.request_id, error) from None
    if gathered is _DISCONNECTED:
        return JSONResponse({}, status_code=499)
    return whole_response(completion)


async def _plan(body: ChatCompletionRequest, request: Request) -> Plan:
    """Validation, the answer's grammar, the prompt: everything before the engine, off the event
    loop; a long prompt text is refused from its size before it is tokenized."""
    served: ServedModel = request.app.state.served
    tools, params, text = await asyncio.to_thread(_prepare, body, served, request.app.state.admission.limits)
    prompt = await request.app.state.prompt_encoder.encode(text)
    _check_context(len(prompt), params, served.max_context_len)
    return Plan(prompt, params, tools)


def _prepare(body: ChatCompletionRequest, served: ServedModel, limits: AdmissionLimits) -> tuple:
    check_supported(body)
    tools = tool_plan(body, served.tool_calling)
    params = sampling_params(body, served.tokenizer.vocab_size, answer_grammar(body, tools))
    if tools is not None and tools.calls_allowed:
        params.shown_token_ids = tools.calling.shown_token_ids
    most = limits.seqs_per_request(served.max_num_seqs)
    if params.n > most:
        raise APIError(ErrorKind.INVALID_REQUEST, f"n is {params.n}, but this server runs at most {most} sequences "
                       "for one request", "n")
    text = render_prompt(body, tools, served)
    check_prompt_size(text, served)
    return tools, params, text


async def _admit(request: Request, outputs: AsyncIterator[RequestOutput], num_prompt_tokens: int,
                 reservation: Reservation, share: Share, record: RequestRecord) -> RequestOutput | object:
    """Waits in the admission queue for the first output. A request that never gets one keeps
    nothing of its rate-limit reservation, nor of its key's share of sequences."""
    admission = request.app.state.admission
    try:
        first = await _unless_disconnected(request, admission.first_output(outputs, num_prompt_tokens, share))
    except BaseException as error:
        reservation.settle(0)
        share.release()
        if isinstance(error, Exception):
            raise engine_error(record.request_id, error) from None
        raise
    if first is _DISCONNECTED:
        reservation.settle(0)
        share.release()
    else:
        record.on_output(request.app.state.metrics)
    return first


def _tokens_to_reserve(num_prompt_tokens: int, params: SamplingParams, max_context_len: int) -> int:
    """The most a request can use: its prompt, and for each choice max_tokens or else the rest of the context."""
    return num_prompt_tokens + params.n * (params.max_tokens or max_context_len - num_prompt_tokens)


def _check_context(num_prompt_tokens: int, params: SamplingParams, max_context_len: int) -> None:
    wanted = num_prompt_tokens + (params.max_tokens or 1)
    if wanted > max_context_len:
        asked = f" plus max_tokens {params.max_tokens}" if params.max_tokens else ""
        raise APIError(ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                       f"this model's context holds {max_context_len} tokens; the messages have "
                       f"{num_prompt_tokens}{asked}", "messages")


async def _observed(first: RequestOutput, outputs: AsyncIterator[RequestOutput], completion: Completion,
                    record: RequestRecord, metrics: ApiMetrics, reservation: Reservation,
                    share: Share) -> AsyncIterator[RequestOutput]:
    """The request's outputs, first one included; times each, and settles the rate limit and gives
    back the key's share of sequences at the end."""
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
        record.finish_reasons = [choice.finish_reason for choice in completion.choices]
        reservation.settle(completion.num_prompt_tokens + completion.num_completion_tokens)
        share.release()


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
