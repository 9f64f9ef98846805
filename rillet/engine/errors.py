"""How the engine says no to one request, or that it failed one, without stopping for the others.

A refusal is known before the request runs (its data can never be served); a failure happens
while it runs (an exception raised for its data in a step). Both end that request alone.
"""
from __future__ import annotations


class RequestRejectedError(ValueError):
    """The engine can never run this request; `param` names the request field at fault."""

    param: str | None = None


class PromptTooLongError(RequestRejectedError):
    """The prompt leaves no room for a single generated token."""

    param = "messages"


class TooManyChoicesError(RequestRejectedError):
    """n is more than the sequences the engine runs at once."""

    param = "n"


class RequestFailedError(RuntimeError):
    """An exception was raised while the engine ran this request; the engine ran on without it."""
