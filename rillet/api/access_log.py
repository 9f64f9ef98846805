"""Request ids and the access log: every response carries `x-request-id`, and every /v1 request
ends with one JSON line on the `rillet.access` logger and its figures in the metrics."""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders

from rillet.api.errors import internal_error
from rillet.api.metrics import ApiMetrics

access_log = logging.getLogger("rillet.access")

MAX_REQUEST_ID_LEN = 128
_NOT_ALLOWED_IN_ID = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass(slots=True)
class RequestRecord:
    """What the access log says of one request; the route fills in what only it knows."""
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    key_id: str | None = None
    model: str | None = None
    user: str | None = None
    completion_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reasons: list[str | None] | None = None
    first_output_at: float | None = None
    last_output_at: float | None = None
    # The code of an error sent after the 200, inside the stream.
    stream_error: str | None = None
    # The client went away before the request finished; the engine aborted it.
    cancelled: bool | None = None

    def on_output(self, metrics: ApiMetrics) -> None:
        now = time.perf_counter()
        if self.first_output_at is None:
            self.first_output_at = now
            metrics.time_to_first_token.observe(now - self.started)
        else:
            metrics.inter_token_latency.observe(now - self.last_output_at)
        self.last_output_at = now

    def line(self, finished: float) -> str:
        reasons = self.finish_reasons
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "request_id": self.request_id, "method": self.method,
            "path": self.path, "status": self.status, "key_id": self.key_id, "model": self.model,
            "completion_id": self.completion_id, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": None if self.first_output_at is None else round(self.first_output_at - self.started, 4),
            "latency_s": round(finished - self.started, 4),
            "finish_reason": reasons[0] if reasons and len(reasons) == 1 else reasons,
            "stream_error": self.stream_error, "cancelled": self.cancelled, "user": self.user,
        }
        return json.dumps({k: v for k, v in entry.items() if v is not None}, ensure_ascii=False)


def configure_access_log(level: int = logging.INFO) -> None:
    """Access lines go to stderr as bare JSON, one a line, apart from the other logs' format."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(level)
    access_log.propagate = False


def request_id_from(scope) -> str:
    """The client's x-request-id, kept to a safe length and alphabet, else a fresh one."""
    sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
    cleaned = _NOT_ALLOWED_IN_ID.sub("", sent)[:MAX_REQUEST_ID_LEN]
    return cleaned or f"req_{uuid.uuid4().hex}"


def record_of(request) -> RequestRecord:
    return request.state.record


class AccessLogMiddleware:
    """The outermost layer: names the request, answers an unexpected failure with a 500 that
    carries the name, and logs and measures every /v1 request when it ends."""

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(request_id_from(scope), scope["method"], scope["path"])
        state = scope.setdefault("state", {})
        state["record"], state["request_id"] = record, record.request_id

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = record.request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if record.status is not None:
                raise  # the response has started: nothing left to answer with
            await internal_error(record.request_id, error).response()(scope, receive, send_with_id)
        finally:
            if scope["path"].startswith("/v1/"):
                self._finish(record, state.get("api_key"))

    def _finish(self, record: RequestRecord, api_key) -> None:
        finished = time.perf_counter()
        record.key_id = api_key.key_id if api_key is not None else None
        status = str(record.status or 499)
        self.metrics.requests.labels(status=status).inc()
        if record.first_output_at is not None:  # a completion the engine ran, not one refused
            self.metrics.request_latency.observe(finished - record.started)
        access_log.info(record.line(finished))
