"""Rate limits per API key: requests per minute and tokens per minute, each a token bucket.

A bucket holds up to one minute's allowance and refills continuously at a sixtieth of it a
second. Every /v1 request a key sends (and every read of /metrics and /openapi.json) takes one
request, valid or not, before its body is read (RateLimitMiddleware), so a flood of bad requests
costs little. A chat completion then reserves its tokens (the prompt plus every token it may
generate) before it reaches the engine; when it ends, the tokens it did not use go back. On an
open server (no keys) one pair of buckets serves every client.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders

from rillet.api.auth import KEYED_PATHS, ApiKey
from rillet.api.errors import APIError, ErrorKind

OPEN_SERVER_ID = "open"


@dataclass(slots=True)
class TokenBucket:
    capacity: int  # the allowance of one minute
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * 60 / self.capacity)


class KeyLimits:
    """The two buckets of one key; None where that limit is off."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float]) -> None:
        now = clock()
        self.requests = TokenBucket(rpm, rpm, now) if rpm else None
        self.tokens = TokenBucket(tpm, tpm, now) if tpm else None
        self._clock = clock

    def take_request(self) -> None:
        """Takes one request, or raises a 429 and takes nothing."""
        self._refill()
        if self.requests is not None:
            if self.requests.level < 1:
                raise _over_limit(ErrorKind.RATE_LIMIT_REQUESTS, "requests", self.requests, 1)
            self.requests.level -= 1

    def reserve(self, num_tokens: int) -> Reservation:
        """Takes `num_tokens` tokens, or raises a 429 and takes nothing."""
        self._refill()
        if self.tokens is not None and num_tokens > self.tokens.capacity:
            raise APIError(ErrorKind.RATE_LIMIT_TOKENS,
                           f"this request needs up to {num_tokens} tokens, more than this key's limit of "
                           f"{self.tokens.capacity} tokens per minute; lower max_tokens or shorten the messages",
                           headers={"x-should-retry": "false"})
        if self.tokens is not None and self.tokens.level < num_tokens:
            raise _over_limit(ErrorKind.RATE_LIMIT_TOKENS, "tokens", self.tokens, num_tokens)
        if self.tokens is not None:
            self.tokens.level -= num_tokens
        return Reservation(self, num_tokens)

    def refund_tokens(self, num_tokens: int) -> None:
        if self.tokens is not None and num_tokens > 0:
            self._refill()
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + num_tokens)

    def add_headers(self, headers: MutableHeaders) -> None:
        self._refill()
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(bucket.capacity)
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = openai_duration(bucket.seconds_until(bucket.capacity))

    def _refill(self) -> None:
        now = self._clock()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)


@dataclass(slots=True)
class Reservation:
    limits: KeyLimits | None  # None: no limit applies
    num_tokens: int
    settled: bool = False

    def settle(self, num_used_tokens: int) -> None:
        """Gives back what the request reserved and did not use; later calls do nothing."""
        if not self.settled and self.limits is not None:
            self.limits.refund_tokens(self.num_tokens - num_used_tokens)
        self.settled = True


def _over_limit(kind: ErrorKind, unit: str, bucket: TokenBucket, wanted: int) -> APIError:
    wait = bucket.seconds_until(wanted)
    return APIError(kind, f"rate limit reached on {unit} per minute: limit {bucket.capacity}, "
                    f"available {math.floor(bucket.level)}, requested {wanted}; "
                    f"please try again in {openai_duration(wait)}",
                    headers={"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))})


def openai_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: "12ms", "1s", "6m0s", "1h2m3.5s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


class RateLimiter:
    def __init__(self, default_rpm: int | None = None, default_tpm: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm
        self._clock = clock
        self._limits: dict[str, KeyLimits] = {}

    def reserve(self, key: ApiKey | None, num_tokens: int) -> Reservation:
        """`num_tokens` tokens from the key's bucket, or a 429."""
        limits = self.limits_for(key)
        return Reservation(None, num_tokens) if limits is None else limits.reserve(num_tokens)

    def limits_for(self, key: ApiKey | None) -> KeyLimits | None:
        """The buckets of a key (of everyone, on an open server); None when no limit applies."""
        key_id = OPEN_SERVER_ID if key is None else key.key_id
        if key_id not in self._limits:
            rpm = _choose(key.rpm if key else None, self.default_rpm)
            tpm = _choose(key.tpm if key else None, self.default_tpm)
            self._limits[key_id] = KeyLimits(rpm, tpm, self._clock)
        limits = self._limits[key_id]
        return limits if limits.requests or limits.tokens else None


def _choose(per_key: int | None, default: int | None) -> int | None:
    """A key's own setting wins; 0 in the keys file means no limit for that key."""
    return default if per_key is None else (per_key or None)


class RateLimitMiddleware:
    """Takes one request from the caller's key for every /v1 request, and every read of /metrics and
    /openapi.json (whose answers cost more than most), before anything reads its body (a 429 when
    none is left), and adds the key's x-ratelimit-* headers to the response."""

    def __init__(self, app, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not (scope["path"].startswith("/v1/") or scope["path"] in KEYED_PATHS):
            await self.app(scope, receive, send)
            return
        limits = self.limiter.limits_for(scope.get("state", {}).get("api_key"))
        if limits is None:  # no limit, no headers: the send of every streamed chunk stays unwrapped
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                limits.add_headers(MutableHeaders(scope=message))
            await send(message)

        try:
            limits.take_request()
        except APIError as error:
            await error.response()(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
