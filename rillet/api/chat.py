"""POST /v1/chat/completions: the chat front on the shared stages (rillet/api/pipeline.py), its
output shaped as chat completions (output.py) and framed as one JSON object or server-sent events
(framing.py). One pipeline serves both modes: the non-stream answer is the stream, gathered.
"""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from rillet.api import pipeline
from rillet.api.access_log import record_of
from rillet.api.framing import EventStreamResponse, stream_events, whole_response
from rillet.api.output import Completion
from rillet.api.schemas import ChatCompletionRequest
from rillet.api.served_model import ServedModel

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    served: ServedModel = request.app.state.served
    pipeline.check_model(body.model, body.user, request)
    plan = await pipeline.plan_request(body, request)
    params = plan.params
    completion = Completion(
        request_id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=served.name,
        fingerprint=served.fingerprint, n=params.n, num_prompt_tokens=len(plan.prompt_token_ids), tools=plan.tools,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        logprob_formatter=request.app.state.logprob_formatter if params.logprobs is not None else None)
    outputs = await pipeline.start_generation(request, plan, completion)
    if outputs is pipeline.DISCONNECTED:
        return pipeline.client_gone()
    if body.stream:
        return EventStreamResponse(stream_events(completion, outputs, record_of(request)))
    if await pipeline.gather_unless_disconnected(request, completion, outputs) is pipeline.DISCONNECTED:
        return pipeline.client_gone()
    return whole_response(completion)
