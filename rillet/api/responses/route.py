"""POST /v1/responses: the Responses front on the shared stages (rillet/api/pipeline.py). The request
is brought to a chat request (convert.py), planned, admitted and generated as any other; its output
is framed as the Responses API's items and typed events (events.py). Stateless: rillet keeps no
responses, so `store: true` and `previous_response_id` are a 400 naming them.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rillet.api import pipeline
from rillet.api.access_log import RequestRecord, record_of
from rillet.api.errors import APIError, ErrorKind, engine_error
from rillet.api.framing import EventStreamResponse
from rillet.api.output import Completion
from rillet.api.responses.convert import chat_request, in_request_terms
from rillet.api.responses.events import ResponseOutput, event_bytes
from rillet.api.responses.schemas import RESPONSES_UNSUPPORTED, ResponsesRequest
from rillet.api.served_model import ServedModel
from rillet.engine.outputs import RequestOutput

router = APIRouter()


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    served: ServedModel = request.app.state.served
    pipeline.check_model(body.model, body.user, request)
    _check_supported(body)
    chat, sources = chat_request(body)
    try:
        plan = await pipeline.plan_request(chat, request)
    except APIError as error:
        raise in_request_terms(error, sources) from None
    response_id = f"resp_{uuid.uuid4().hex}"
    completion = Completion(request_id=response_id, created=int(time.time()), model=served.name, fingerprint=served.fingerprint,
                            n=1, num_prompt_tokens=len(plan.prompt_token_ids), tools=plan.tools)
    output = ResponseOutput(response_id, served.name, body, completion)
    try:
        outputs = await pipeline.start_generation(request, plan, completion)
    except APIError as error:
        raise in_request_terms(error, sources) from None
    if outputs is pipeline.DISCONNECTED:
        return pipeline.client_gone()
    if body.stream:
        return EventStreamResponse(_events(output, outputs, record_of(request)))
    gathered = await pipeline.gather_unless_disconnected(request, completion, outputs, on_updates=output.apply)
    if gathered is pipeline.DISCONNECTED:
        return pipeline.client_gone()
    output.finished()
    return JSONResponse(output.response())


def _check_supported(body: ResponsesRequest) -> None:
    if body.store:
        raise APIError(ErrorKind.RESPONSE_STATE_UNSUPPORTED, "store is not supported: this server keeps no responses. "
                       "Leave store out (or false) and send the whole conversation in input", "store")
    if body.previous_response_id is not None:
        raise APIError(ErrorKind.RESPONSE_STATE_UNSUPPORTED, "previous_response_id is not supported: this server "
                       "keeps no responses. Send the whole conversation in input (the earlier output items as "
                       "they came)", "previous_response_id")
    for name, is_default in RESPONSES_UNSUPPORTED.items():
        if not is_default(getattr(body, name)):
            raise APIError(ErrorKind.UNSUPPORTED_PARAMETER, f"{name} is not supported by this server yet", name)
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise APIError(ErrorKind.UNSUPPORTED_PARAMETER, "text.verbosity is not supported by this server yet",
                       "text.verbosity")


async def _events(output: ResponseOutput, outputs: AsyncIterator[RequestOutput],
                  record: RequestRecord) -> AsyncIterator[bytes]:
    completion = output.completion
    async with contextlib.aclosing(outputs):
        events = output.started()
        try:
            async for engine_output in outputs:
                events += output.apply(completion.update(engine_output))
                if events:
                    yield b"".join(event_bytes(event) for event in events)
                    events = []
            events += output.finished()
        except Exception as error:  # the headers are gone: report in-band, never a traceback
            api_error = engine_error(record.request_id, error)
            record.stream_error = api_error.kind.value.code
            events += output.failed(api_error)
        yield b"".join(event_bytes(event) for event in events)
