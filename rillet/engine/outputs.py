"""What the engine hands back to its caller: per-request deltas, one per engine step.

Each class pickles as its constructor and its fields (__reduce__): a step's outputs cross the pipe
from the engine process once per step, and the dataclass default (__getstate__/__setstate__ written
in Python, which walk fields()) cost about twice as much on each side."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    """Log probability of a generated token under the model, and of its top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)

    def __reduce__(self):
        return TokenLogprob, (self.token_id, self.logprob, self.top)


@dataclass(slots=True)
class ChoiceDelta:
    """New output of one choice (one of the request's n sequences) since its previous delta."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    # None while the choice runs; "stop" or "length" on its last delta.
    finish_reason: str | None = None
    # One entry per new token, when the request asked for logprobs.
    logprobs: list[TokenLogprob] | None = None

    def __reduce__(self):
        return ChoiceDelta, (self.index, self.text, self.token_ids, self.finish_reason, self.logprobs)


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    num_prompt_tokens: int
    deltas: list[ChoiceDelta]
    # True on the request's last output: every choice has finished, or the request failed.
    finished: bool = False
    # Set when the engine failed the request while running it (the deltas are then empty).
    error: str | None = None

    def __reduce__(self):
        return RequestOutput, (self.request_id, self.num_prompt_tokens, self.deltas, self.finished, self.error)
