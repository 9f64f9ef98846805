"""The OpenAPI schema at /openapi.json: FastAPI's, with what FastAPI cannot know of this server.

- Every status an operation can answer with, in OpenAI's error envelope, from the one error table
  (FastAPI lists only 200 and a 422 of its own shape, which this server never sends).
- The bounds this server was started with: `n` up to the sequences one request may have, the
  token counts up to the context, `model` the name it serves.
- A streamed completion's (and a streamed response's) 200 as text/event-stream.

The request's own bounds (stop, the parameters accepted only at their defaults) are declared where
they are enforced, in rillet/api/schemas.py.
"""
from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from rillet.api.admission import AdmissionLimits
from rillet.api.auth import KEYED_PATHS
from rillet.api.errors import ErrorKind
from rillet.api.served_model import ServedModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: every error this server answers with."""
    error: ErrorDetail


class HealthStatus(BaseModel):
    status: str


HEALTH_RESPONSES = {503: {"model": HealthStatus, "description": "The engine is not running (it is being restarted)"}}

# What a server-wide layer can answer on any route (request_head.py, http_server.py, body_limit.py,
# Starlette's routing) and what only the API's own routes (and the keyed paths) can.
_ANY_ROUTE = {400, 403, 405, 408, 413, 431, 500}
_HEADERS = {
    405: {"Allow": {"description": "The methods of this path", "required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait, where waiting helps", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}},
}


def install_openapi(app: FastAPI, served: ServedModel, limits: AdmissionLimits) -> None:
    build = app.openapi
    done = False

    def openapi() -> dict:
        nonlocal done
        schema = build()
        if not done:
            _complete(schema, served, limits)
            done = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(schema: dict, served: ServedModel, limits: AdmissionLimits) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for name, model_schema in _model_schemas(ErrorResponse).items():
        components[name] = model_schema
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            _declare_errors(path, operation["responses"])
    for path, said in _EVENT_STREAMS.items():
        operation = schema["paths"].get(path, {}).get("post")
        if operation is not None:
            # Before OpenAPI 3.2 (itemSchema), the schema of an event stream is that of each event.
            operation["responses"]["200"]["content"]["text/event-stream"] = {"schema": {
                "type": "object", "required": ["data"], "description": "One server-sent event, when stream is true",
                "properties": {"data": {"type": "string", "description": said}}}}
    request = components.get("ChatCompletionRequest")
    if request is not None:
        _declare_bounds(request["properties"], served, limits)
        request["allOf"] = _NEEDS  # the pairs sampling.py's check_supported refuses apart
    responses_request = components.get("ResponsesRequest")
    if responses_request is not None:
        properties = responses_request["properties"]
        _set_on_integer(properties["max_output_tokens"], maximum=served.max_context_len - 1)
        properties["model"]["enum"] = [served.name]
        # store and previous_response_id: only their defaults; anything else is a 400 naming them.
        properties["store"] = {"anyOf": [{"type": "boolean", "enum": [False]}, {"type": "null"}],
                               "description": "This server keeps no responses: false or left out"}
        properties["previous_response_id"] = {"type": "null", "description": "This server keeps no responses"}


# What one event of each streamed operation carries.
_EVENT_STREAMS = {
    "/v1/chat/completions": 'A chat.completion.chunk as JSON, an error as {"error": ...}, or [DONE]',
    "/v1/responses": "A typed event as JSON (response.created, response.output_text.delta, ..., response.completed,"
                     " or error then response.failed), its type also the event's name",
}


def _declare_errors(path: str, responses: dict) -> None:
    responses.pop("422", None)  # FastAPI's own shape, replaced by the envelope below
    api_route = path.startswith("/v1/") or path in KEYED_PATHS
    for status, kinds in _statuses().items():
        if str(status) in responses or not (api_route or status in _ANY_ROUTE):
            continue
        codes = ", ".join(sorted({kind.value.code or "null" for kind in kinds}))
        response = {"description": f"An error; its code is one of: {codes}",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        responses[str(status)] = response


def _statuses() -> dict[int, list[ErrorKind]]:
    statuses: dict[int, list[ErrorKind]] = {}
    for kind in ErrorKind:
        statuses.setdefault(kind.value.status, []).append(kind)
    return dict(sorted(statuses.items()))


# top_logprobs needs logprobs true; stream_options needs stream true.
_NEEDS = [{"if": {"properties": {field: {"not": {"type": "null"}}}, "required": [field]},
           "then": {"properties": {needed: {"const": True}}, "required": [needed]}}
          for field, needed in (("top_logprobs", "logprobs"), ("stream_options", "stream"))]


def _declare_bounds(properties: dict, served: ServedModel, limits: AdmissionLimits) -> None:
    _set_on_integer(properties["n"], maximum=limits.seqs_per_request(served.max_num_seqs))
    for name in ("max_tokens", "max_completion_tokens"):
        # The prompt holds a token at least: more than this can never fit the context.
        _set_on_integer(properties[name], maximum=served.max_context_len - 1)
    properties["model"]["enum"] = [served.name]  # any other name is a 404 model_not_found


def _set_on_integer(field: dict, **bounds: int) -> None:
    for member in field.get("anyOf", [field]):
        if member.get("type") == "integer":
            member.update(bounds)


def _model_schemas(model: type[BaseModel]) -> dict[str, dict]:
    """The model's JSON schema and those it refers to, as components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {model.__name__: schema, **definitions}

