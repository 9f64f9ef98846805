"""Admission: a bounded wait for the engine.

A request waits from the moment it is handed to the engine until its first output (its
prompt computed, its first token sampled). The requests waiting, and their prompt tokens,
are bounded; a request beyond either bound gets a fast 503 `overloaded` with Retry-After instead
of an unbounded wait. So does one that the engine has not begun to run (scheduled) within the
queue timeout; the time its prompt then takes to compute does not count.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from rillet.api.errors import APIError, ErrorKind
from rillet.engine.outputs import RequestOutput

RETRY_AFTER_SECONDS = 1
DEFAULT_MAX_QUEUED_REQUESTS = 256
DEFAULT_MAX_QUEUED_TOKENS = 65536
DEFAULT_QUEUE_TIMEOUT = 60.0


@dataclass(slots=True)
class AdmissionLimits:
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT


class Admission:
    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.num_waiting_requests = 0
        self.num_waiting_tokens = 0

    @contextlib.contextmanager
    def waiting(self, num_prompt_tokens: int) -> Iterator[None]:
        """Holds a place in the queue, or raises the 503 when there is none. A request larger
        than the whole token bound still gets in when nothing else waits."""
        if self.num_waiting_requests >= self.limits.max_queued_requests:
            raise overloaded(f"the server is overloaded: {self.num_waiting_requests} requests are already waiting")
        if self.num_waiting_requests and \
                self.num_waiting_tokens + num_prompt_tokens > self.limits.max_queued_tokens:
            raise overloaded(f"the server is overloaded: {self.num_waiting_tokens} prompt tokens are already waiting")
        self.num_waiting_requests += 1
        self.num_waiting_tokens += num_prompt_tokens
        try:
            yield
        finally:
            self.num_waiting_requests -= 1
            self.num_waiting_tokens -= num_prompt_tokens

    async def first_output(self, outputs: AsyncIterator[RequestOutput], num_prompt_tokens: int) -> RequestOutput:
        """Waits in the queue for the request's first output with tokens (or its end). If the
        engine has not scheduled it within the queue timeout, it is aborted in the engine (its
        iterator closed) and the 503 raised. The engine's notice that it has scheduled the
        request (an output of no deltas) stops the clock, and is not returned."""
        with self.waiting(num_prompt_tokens):
            try:
                first = await asyncio.wait_for(anext(outputs), self.limits.queue_timeout)
            except TimeoutError:
                await outputs.aclose()
                raise overloaded(f"the request waited longer than the queue timeout of "
                                 f"{self.limits.queue_timeout:g} s for the engine") from None
            while not first.deltas and not first.finished:
                first = await anext(outputs)
            return first


def overloaded(message: str) -> APIError:
    return APIError(ErrorKind.OVERLOADED, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
