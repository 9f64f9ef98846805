"""The HTTP server: uvicorn over h11 on asyncio's own loop, chosen here whatever else is installed
(uvicorn's "auto" takes httptools and uvloop when they are present, and httptools has no setting
for the size of a request head: a 64 MB header was read whole). Its bounds:

- a request head larger than MAX_HEAD_BYTES is a 431 (h11's own limit, h11_max_incomplete_event_size);
  its count of headers is bounded in rillet/api/request_head.py;
- a request head must arrive within `header_timeout` seconds of the connection (or of the end of
  the response before it). uvicorn has no such setting: its keep-alive timer is stopped by every
  byte received, and a new connection has none, so one header line every few seconds held a
  connection for ever (slowloris). The body's own deadline is in rillet/api/body_limit.py;
- at most `max_connections` connections at once, and fewer where the file limit is low; one more
  is answered at once with a 503 and closed, rather than left to exhaust the process's files
  (after which every accept failed, and asyncio logged each failure with its traceback);
- each kind of refusal is logged once per LOG_INTERVAL seconds, with a count, not once per
  connection (RepeatFilter, also on uvicorn's and asyncio's own loggers).

uvicorn's limit_concurrency is not used: it answers only once a request's head has arrived, so
connections that never finish one were never refused, and its 503 is plain text.
"""
from __future__ import annotations

import asyncio
import http
import json
import logging
import resource
import time
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from rillet.api.errors import APIError, ErrorKind
from rillet.config import DEFAULTS

log = logging.getLogger("rillet.http")

MAX_HEAD_BYTES = 16 * 1024
KEEP_ALIVE_SECONDS = 5
DEFAULT_HEADER_TIMEOUT = DEFAULTS.header_timeout
DEFAULT_MAX_CONNECTIONS = DEFAULTS.max_connections
# The listen backlog; asyncio accepts up to this many connections in one turn of the loop, before
# any of them is counted against the cap.
LISTEN_BACKLOG = 256
# A refused connection is half-closed after its answer and read until the client closes or this
# long: closing with its request unread would reset the connection and lose the answer.
LINGER_SECONDS = 1.0
MAX_LINGERING = 64
# Files kept for everything but the connections under the cap: one turn's accepts, the refused
# connections still closing, and the process's own (the listening socket, the engine's pipes, the
# log: 13 at rest).
FILE_RESERVE = LISTEN_BACKLOG + MAX_LINGERING + 64
LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def raise_file_limit() -> int:
    """Raises this process's limit of open files to its hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted


def connection_cap(wanted: int, file_limit: int) -> int:
    """The connections the server holds at once: `wanted`, or fewer where the file limit is lower."""
    return max(1, min(wanted, file_limit - FILE_RESERVE))


def server_config(app, host: str, port: int, limits: ConnectionLimits, graceful_shutdown: float) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, http=guarded_protocol(limits), loop="asyncio", ws="none", backlog=LISTEN_BACKLOG,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES, timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level="warning", access_log=False, timeout_graceful_shutdown=graceful_shutdown)


def install_log_limits() -> None:
    """At most one line per LOG_INTERVAL for each repeated message of the HTTP layers' loggers."""
    repeat_filter = RepeatFilter(LOG_INTERVAL)
    for name in ("uvicorn.error", "asyncio", log.name):
        logging.getLogger(name).addFilter(repeat_filter)


class RepeatFilter(logging.Filter):
    """Lets a message through once per interval (keyed by its logger and the first line of its
    format, so that counts and addresses in it do not make it new); the next one let through says
    how many were held back."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg).split("\n", 1)[0][:120])
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            message = f"{record.getMessage()} ({held} more like it in the last {self.interval:g} s not logged)"
            record.msg, record.args = message, None
        return True


def response_bytes(error: APIError) -> bytes:
    """An error's whole HTTP/1.1 response, for answers given outside the app (no request to
    answer through it yet); the connection closes after it."""
    body = json.dumps(error.body()).encode()
    status = error.kind.value.status
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close",
             *(f"{name}: {value}" for name, value in error.headers.items() if name.lower() != "connection")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the head deadline, the connection cap and JSON refusals."""
    lingering = [0]  # refused connections of this server still closing

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_bytes = 0
            self._refused = False
            self._lingering = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                self.transport = transport
                log.warning("refused a connection: %d connections open, the limit", len(self.connections))
                self._refuse(APIError(ErrorKind.OVERLOADED, f"the server holds {len(self.connections)} connections, "
                                      "its limit; try again", headers={"Retry-After": "1"}))
                return
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # read only to be dropped: the answer has gone out
            self._head_bytes += len(data)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in (or refused)
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()  # the next request's head, on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            if self._lingering:
                self._lingering = False
                lingering[0] -= 1
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """h11 refused the head: too large (its buffer passed the limit) or malformed."""
            if len(self.conn.trailing_data[0]) > MAX_HEAD_BYTES:
                error = APIError(ErrorKind.HEADERS_TOO_LARGE,
                                 f"the request head is larger than this server's limit of {MAX_HEAD_BYTES} bytes")
            else:
                error = APIError(ErrorKind.INVALID_HTTP, "the request is not valid HTTP/1.1")
            self._refuse(error)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(limits.header_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if not self._head_bytes:  # an idle connection: closed as the keep-alive timeout closes one
                self.transport.close()
                return
            log.warning("closed a connection whose request head did not arrive within %g s", limits.header_timeout)
            self._refuse(APIError(ErrorKind.REQUEST_TIMEOUT, f"the request head did not arrive within "
                                  f"{limits.header_timeout:g} s"))

        def _refuse(self, error: APIError) -> None:
            """Answers outside the app, then closes: half-closed first and read until the client
            closes (or LINGER_SECONDS), where few are closing so already."""
            self._refused = True
            self._cancel_head_timer()
            self._unset_keepalive_if_required()
            self.transport.write(response_bytes(error))
            if lingering[0] >= MAX_LINGERING or not self.transport.can_write_eof():
                self.transport.close()
                return
            lingering[0] += 1
            self._lingering = True
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return GuardedH11Protocol
