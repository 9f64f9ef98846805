"""The engine's protocol: what a client sends down to an engine loop, and what an engine process
sends back up, as typed messages (as vLLM v1's EngineCoreRequest and EngineCoreOutputs are).

The loop runs on a thread beside the event loop (AsyncEngine: commands through a queue) or on the
main thread of a child process (EngineProcess: both directions pickled through pipes). A message's
class is its kind, so a receiver dispatches with `match`; no tag travels beside it to drift from it.

The messages sent once per request or per step pickle as their constructor and fields (__reduce__),
as rillet/engine/outputs.py's do: the dataclass default costs about twice as much on each side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stats import EngineStats

# -- commands: a client to its engine loop ----------------------------------------------------


@dataclass(slots=True, frozen=True)
class AddRequest:
    """Run a request: its prompt and how to sample its n choices."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams

    def __reduce__(self):
        return AddRequest, (self.request_id, self.prompt_token_ids, self.params)


@dataclass(slots=True, frozen=True)
class AbortRequest:
    """Stop a request and free its blocks (its consumer has gone)."""

    request_id: str


@dataclass(slots=True, frozen=True)
class StopEngine:
    """End the loop; also what a loop reads when its command source has closed."""


STOP = StopEngine()
EngineCommand: TypeAlias = AddRequest | AbortRequest | StopEngine

# -- an engine process to its parent ------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class EngineReady:
    """The child's first message once its engine is built."""

    max_model_len: int
    weight_format: str
    stats: EngineStats
    # Blocks of positions its prefix cache can keep (LLMEngine.cacheable_blocks).
    cacheable_blocks: int


@dataclass(slots=True, frozen=True)
class EngineStartFailed:
    """The child's first and last message when it could not load the model or build its engine."""

    reason: str


@dataclass(slots=True, frozen=True)
class EngineOutputs:
    """One step's outputs (none: a prefill chunk samples nothing, or commands changed the engine's
    state), with the engine's figures after it."""

    outputs: list[RequestOutput]
    stats: EngineStats

    def __reduce__(self):
        return EngineOutputs, (self.outputs, self.stats)


@dataclass(slots=True, frozen=True)
class RequestFailed:
    """A request the engine refused (a RequestRejectedError) or could not take in."""

    request_id: str
    error: Exception


@dataclass(slots=True, frozen=True)
class EngineDied:
    """The child's last message when its loop stopped on an error."""

    reason: str


EngineMessage: TypeAlias = EngineReady | EngineStartFailed | EngineOutputs | RequestFailed | EngineDied
