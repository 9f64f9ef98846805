"""Admission: a bounded wait for the engine.

A request waits from the moment it is handed to the engine until its first output (its
prompt computed, its first token sampled). The requests waiting, and their prompt tokens,
are bounded; a request beyond either bound gets a fast 503 `overloaded` with Retry-After instead
of an unbounded wait. So does one that the engine has not begun to run (scheduled) within the
queue timeout; the time its prompt then takes to compute does not count. A request over its key's
share of sequences (rillet/api/shares.py) waits here too, before it reaches the engine.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from rillet.api.errors import APIError, ErrorKind
from rillet.api.shares import KeyShares, Share
from rillet.config import DEFAULTS
from rillet.engine.outputs import RequestOutput

RETRY_AFTER_SECONDS = 1
DEFAULT_MAX_QUEUED_REQUESTS = DEFAULTS.max_queued_requests
DEFAULT_MAX_QUEUED_TOKENS = DEFAULTS.max_queued_tokens
DEFAULT_QUEUE_TIMEOUT = DEFAULTS.queue_timeout


@dataclass(slots=True)
class AdmissionLimits:
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    # The most sequences (n) one request may ask for; None: as many as the engine runs at once.
    max_seqs_per_request: int | None = None
    # The most sequences one key may have in flight; None: no share (an open server has none anyway).
    max_seqs_per_key: int | None = None

    def seqs_per_request(self, max_num_seqs: int) -> int:
        """The largest n a request may ask for, on an engine that runs max_num_seqs at once."""
        return min(max_num_seqs, self.max_seqs_per_request or max_num_seqs)


def default_sequence_shares(max_num_seqs: int) -> tuple[int, int]:
    """Sequences per request and per key when no flag sets them: a quarter and a half of what the
    engine runs at once, so that one request, or one key, always leaves room for others."""
    return max(1, max_num_seqs // 4), max(1, max_num_seqs // 2)


class Admission:
    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.shares = KeyShares(self.limits.max_seqs_per_key)
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

    async def first_output(self, outputs: AsyncIterator[RequestOutput], num_prompt_tokens: int,
                           share: Share | None = None) -> RequestOutput:
        """Waits in the queue for the request's key's share of sequences, then for its first output
        with tokens (or its end). If the engine has not scheduled it within the queue timeout, it is
        aborted in the engine (its iterator closed) and the 503 raised. The engine's notice that it
        has scheduled the request (an output of no deltas) stops the clock, and is not returned.
        The caller releases the share when the request ends."""
        with self.waiting(num_prompt_tokens):
            try:
                first = await asyncio.wait_for(_scheduled(outputs, share), self.limits.queue_timeout)
            except TimeoutError:
                await outputs.aclose()
                if share is not None and not share.held:
                    raise overloaded(f"the request waited longer than the queue timeout of "
                                     f"{self.limits.queue_timeout:g} s for its key's earlier requests to end: a key "
                                     f"may have {self.limits.max_seqs_per_key} sequences in flight") from None
                raise overloaded(f"the request waited longer than the queue timeout of "
                                 f"{self.limits.queue_timeout:g} s for the engine") from None
            while not first.deltas and not first.finished:
                first = await anext(outputs)
            return first


async def _scheduled(outputs: AsyncIterator[RequestOutput], share: Share | None) -> RequestOutput:
    """The engine's first output, once the request holds its share (its first step hands it to the engine)."""
    if share is not None:
        await share.acquire()
    return await anext(outputs)


def overloaded(message: str) -> APIError:
    return APIError(ErrorKind.OVERLOADED, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
