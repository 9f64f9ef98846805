"""Every error the API returns, as data: one table maps a kind to its status, type and code,
and the handlers here turn any failure into OpenAI's envelope."""
from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rillet.engine.engine_client import EngineDeadError
from rillet.engine.errors import PromptTooLongError, RequestFailedError, RequestRejectedError

log = logging.getLogger("rillet.api")


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    status: int
    type: str
    code: str | None


class ErrorKind(enum.Enum):
    INVALID_REQUEST = ErrorSpec(422, "invalid_request_error", None)
    # A request head the HTTP parser refused (a malformed request line or header).
    INVALID_HTTP = ErrorSpec(400, "invalid_request_error", "invalid_http_request")
    # A body that is not UTF-8, or a string in it with a lone surrogate (\ud800): no tokenizer reads it
    # (rillet/api/body_limit.py).
    INVALID_UNICODE = ErrorSpec(400, "invalid_request_error", "invalid_unicode")
    UNSUPPORTED_PARAMETER = ErrorSpec(422, "invalid_request_error", "unsupported_parameter")
    CONTEXT_LENGTH_EXCEEDED = ErrorSpec(400, "invalid_request_error", "context_length_exceeded")
    # store or previous_response_id on /v1/responses: this server keeps no responses.
    RESPONSE_STATE_UNSUPPORTED = ErrorSpec(400, "invalid_request_error", "stored_responses_unsupported")
    UNSUPPORTED_SCHEMA = ErrorSpec(400, "invalid_request_error", "unsupported_schema")
    INVALID_API_KEY = ErrorSpec(401, "invalid_request_error", "invalid_api_key")
    MODEL_NOT_ALLOWED = ErrorSpec(403, "invalid_request_error", "model_not_allowed")
    METRICS_NOT_ALLOWED = ErrorSpec(403, "invalid_request_error", "metrics_not_allowed")
    # A Host this loopback server does not answer to: a DNS-rebinding page (rillet/api/request_head.py).
    HOST_NOT_ALLOWED = ErrorSpec(403, "invalid_request_error", "host_not_allowed")
    MODEL_NOT_FOUND = ErrorSpec(404, "invalid_request_error", "model_not_found")
    ROUTE_NOT_FOUND = ErrorSpec(404, "invalid_request_error", "not_found")
    METHOD_NOT_ALLOWED = ErrorSpec(405, "invalid_request_error", "method_not_allowed")
    # The request head or body did not arrive in time (rillet/api/http_server.py, body_limit.py).
    REQUEST_TIMEOUT = ErrorSpec(408, "invalid_request_error", "request_timeout")
    REQUEST_TOO_LARGE = ErrorSpec(413, "invalid_request_error", "request_too_large")
    HEADERS_TOO_LARGE = ErrorSpec(431, "invalid_request_error", "request_headers_too_large")
    # OpenAI names the exhausted limit in `type`.
    RATE_LIMIT_REQUESTS = ErrorSpec(429, "requests", "rate_limit_exceeded")
    RATE_LIMIT_TOKENS = ErrorSpec(429, "tokens", "rate_limit_exceeded")
    INTERNAL = ErrorSpec(500, "server_error", "internal_error")
    OVERLOADED = ErrorSpec(503, "server_error", "overloaded")
    ENGINE_UNAVAILABLE = ErrorSpec(503, "server_error", "engine_unavailable")


class APIError(Exception):
    def __init__(self, kind: ErrorKind, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        spec = self.kind.value
        return {"error": {"message": self.message, "type": spec.type, "param": self.param, "code": spec.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.kind.value.status, headers=self.headers)


def validation_error(exc: RequestValidationError) -> APIError:
    """One pydantic error, with `param` the dotted path of the field in the body."""
    errors = exc.errors()
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(ErrorKind.INVALID_REQUEST, f"the body is not valid JSON: {first.get('msg')}")
    if not _field_path(first):
        return APIError(ErrorKind.INVALID_REQUEST, "the request body must be a JSON object")
    path = _field_path(first)
    # A union member whose type tag did not match: its siblings under the union may say more.
    error = _most_specific(errors, path[:-1] if _member_of_other_type(first) else path)
    param = ".".join(_field_path(error))
    message = "unrecognized request argument" if error.get("type") == "extra_forbidden" else error.get("msg")
    if error.get("type") == "value_error":  # raised by a validator of ours: its own words
        message = str(error["ctx"]["error"])
    return APIError(ErrorKind.INVALID_REQUEST, f"{param}: {message or 'invalid value'}", param)


def _field_path(error: dict) -> list[str]:
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    # Pydantic names union members in the path ("str", "list[...]", a model's class name); they are
    # not fields (the request's own fields are lower case).
    return [part for part in location
            if not (part[:1].islower() and ("[" in part or part in _TYPE_NAMES)) and not part[:1].isupper()]


def _most_specific(errors: list[dict], field_path: list[str]) -> dict:
    """Of the errors under the first one's field, the deepest: for a union such as a message's
    content, the member that got furthest says more than "should be a valid string"."""
    under = [e for e in errors if _field_path(e)[:len(field_path)] == field_path]
    # A union member whose type tag did not match says least: {"type": "json_schema"} is a json_schema
    # format missing its json_schema, not a text format of the wrong type.
    others = {tuple(e["loc"][:-1]) for e in under if _member_of_other_type(e)}
    fitting = [e for e in under if not any(tuple(e["loc"][:len(m)]) == m for m in others)] or under
    return max(fitting, key=lambda e: len(_field_path(e)))


def _member_of_other_type(error: dict) -> bool:
    """A literal error on the `type` of a union member: that member is of another type."""
    loc = [str(part) for part in error.get("loc", ())]
    return error.get("type") == "literal_error" and len(loc) >= 2 and loc[-1] == "type" and loc[-2][:1].isupper()


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "function-after", "literal"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, APIError):  # raised by a bound on the body as it was read (body_limit.py)
            return exc.__cause__.response()
        if exc.status_code == 404:
            error = APIError(ErrorKind.ROUTE_NOT_FOUND, f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:  # Starlette names the methods the route has in Allow
            error = APIError(ErrorKind.METHOD_NOT_ALLOWED, f"method {request.method} not allowed on {request.url.path}",
                             headers=exc.headers)
        elif exc.status_code == 408:
            error = APIError(ErrorKind.REQUEST_TIMEOUT, str(exc.detail), headers=exc.headers)
        elif exc.status_code == 413:
            error = APIError(ErrorKind.REQUEST_TOO_LARGE, str(exc.detail))
        elif isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's 400 for a body it could not decode
            error = APIError(ErrorKind.INVALID_UNICODE, f"the body is not valid UTF-8: {exc.__cause__.reason} "
                             f"at byte {exc.__cause__.start}")
        else:
            error = APIError(ErrorKind.INVALID_REQUEST, str(exc.detail))
        return error.response()

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request_id_of(request), exc).response()


def internal_error(request_id: str | None, exc: BaseException, with_traceback: bool = True) -> APIError:
    """Logs the traceback; the client only learns the request id, which finds it in the log."""
    request_id = request_id or f"req_{uuid.uuid4().hex}"
    if with_traceback:
        log.error("internal error in request %s", request_id, exc_info=exc)
    else:
        log.error("internal error in request %s: %s", request_id, exc)
    return APIError(ErrorKind.INTERNAL, f"internal server error (request id {request_id})")


def engine_error(request_id: str, error: BaseException) -> APIError:
    """What the client is told of a failure on the way through the engine."""
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


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)

