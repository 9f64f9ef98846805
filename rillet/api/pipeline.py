"""The stages every API front shares, from a validated request to the engine's outputs:

parse and validate (schemas.py, sampling.py, tools.py) → render the prompt (prompt.py) and the
answer's grammar (structured_output.py) → admit (rate_limit.py, admission.py) → generate (the
engine client). A front (chat.py, responses/) brings its request to the chat request these stages
take, then shapes the outputs (output.py) and frames them on its own wire.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

from rillet.api.access_log import RequestRecord, record_of
from rillet.api.admission import AdmissionLimits
from rillet.api.auth import api_key_of, check_model_allowed
from rillet.api.errors import APIError, ErrorKind, engine_error
from rillet.api.metrics import ApiMetrics
from rillet.api.output import ChoiceUpdate, Completion
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

T = TypeVar("T")
# What a stage that waited on the client returns once the client has gone away.
DISCONNECTED = object()


def client_gone() -> JSONResponse:
    """The answer to a client that went away before it: nobody reads it, the access log does."""
    return JSONResponse({}, status_code=499)


@dataclass(slots=True)
class Plan:
    """A validated request, ready for the engine."""
    prompt_token_ids: list[int]
    params: SamplingParams
    tools: ToolPlan | None


def check_model(model: str, user: str | None, request: Request) -> None:
    """The key may use the model, and the server serves it (both recorded for the access log, with
    the request's `user`)."""
    record = record_of(request)
    record.model, record.user = model, user
    check_model_allowed(api_key_of(request), model)
    if model != request.app.state.served.name:
        raise APIError(ErrorKind.MODEL_NOT_FOUND, f"the model {model!r} does not exist", "model")


async def plan_request(body: ChatCompletionRequest, request: Request) -> Plan:
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


async def start_generation(request: Request, plan: Plan, completion: Completion) -> AsyncIterator[RequestOutput] | object:
    """Reserves the request's tokens and its key's share, hands it to the engine and waits in the
    admission queue for its first output. Returns the outputs (the first one included), which settle
    the reservation and give the share back when they end; DISCONNECTED if the client went away."""
    engine = request.app.state.engine
    if not engine.is_alive:
        raise APIError(ErrorKind.ENGINE_UNAVAILABLE, "the engine is not running")
    served: ServedModel = request.app.state.served
    record = record_of(request)
    key = api_key_of(request)
    prompt, params = plan.prompt_token_ids, plan.params
    record.completion_id, record.prompt_tokens = completion.request_id, len(prompt)
    reservation = request.app.state.rate_limiter.reserve(
        key, _tokens_to_reserve(len(prompt), params, served.max_context_len))
    share = request.app.state.admission.shares.claim(key.key_id if key else None, params.n)
    outputs = engine.generate(completion.request_id, prompt, params)
    first = await _admit(request, outputs, len(prompt), reservation, share, record)
    if first is DISCONNECTED:
        return DISCONNECTED
    return _observed(first, outputs, completion, record, request.app.state.metrics, reservation, share)


async def gather_unless_disconnected(request: Request, completion: Completion, outputs: AsyncIterator[RequestOutput],
                                     on_updates: Callable[[list[ChoiceUpdate]], object] | None = None) -> object | None:
    """Records every output into the completion (and hands its updates to on_updates);
    DISCONNECTED if the client went away first."""
    async def gather() -> None:
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                updates = completion.update(output)
                if on_updates is not None:
                    on_updates(updates)

    try:
        return await unless_disconnected(request, gather())
    except Exception as error:
        raise engine_error(record_of(request).request_id, error) from None


async def _admit(request: Request, outputs: AsyncIterator[RequestOutput], num_prompt_tokens: int,
                 reservation: Reservation, share: Share, record: RequestRecord) -> RequestOutput | object:
    """Waits in the admission queue for the first output. A request that never gets one keeps
    nothing of its rate-limit reservation, nor of its key's share of sequences."""
    admission = request.app.state.admission
    try:
        first = await unless_disconnected(request, admission.first_output(outputs, num_prompt_tokens, share))
    except BaseException as error:
        reservation.settle(0)
        share.release()
        if isinstance(error, Exception):
            raise engine_error(record.request_id, error) from None
        raise
    if first is DISCONNECTED:
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


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | object:
    """Runs `work` until it ends or the client goes away; then it is cancelled (which aborts
    the request in the engine) and DISCONNECTED returned."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # cancel() only asks; the task ends on its next turn
    return DISCONNECTED if task.cancelled() else task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
