"""The engine loop: commands in, one batched model step at a time, outputs out.

The same loop runs on a thread beside the event loop (AsyncEngine) or on the main thread of a
child process (EngineProcess); only how commands arrive and outputs leave differs (LoopIO).
The commands are rillet/engine/messages.py's: AddRequest, AbortRequest, StopEngine.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from rillet.engine.errors import RequestFailedError, RequestRejectedError
from rillet.engine.messages import STOP, AbortRequest, AddRequest, EngineCommand, StopEngine
from rillet.engine.outputs import RequestOutput
from rillet.model.loader import release_freed_memory

if TYPE_CHECKING:
    from rillet.engine.llm_engine import LLMEngine

__all__ = ["STOP", "LoopIO", "run_engine_loop"]

log = logging.getLogger("rillet.engine")


class LoopIO(Protocol):
    def receive(self, block: bool) -> EngineCommand | None:
        """The next command; None when none waits and block is False; STOP when the sender is gone."""

    def publish(self, outputs: list[RequestOutput]) -> None:
        """One step's outputs (possibly none: a prefill chunk samples nothing)."""

    def fail_request(self, request_id: str, error: Exception) -> None:
        """A request the engine refused (a RequestRejectedError) or could not take in."""

    def commands_handled(self) -> None:
        """Commands changed the engine's state (an abort freed blocks, an add queued a request)."""


def run_engine_loop(engine: LLMEngine, io: LoopIO) -> None:
    """Runs until a stop command (or the command source closing); an error in a step that is not
    one request's propagates. An engine that has work but can schedule none of it (engine.stalled)
    waits for the next command instead of spinning: only a command can change what it can run."""
    busy = False
    while True:
        block = not engine.has_work or engine.stalled
        if block and busy:
            # Going idle: hand the step buffers the C heap kept (hundreds of MB of logits and sampler
            # temporaries after a large batch) back to the system.
            release_freed_memory()
        busy = not block
        handled = False
        while (command := io.receive(block)) is not None:
            block, handled = False, True
            match command:
                case AddRequest():
                    _add(engine, io, command)
                case AbortRequest(request_id=request_id):
                    engine.abort_request(request_id)
                case StopEngine():
                    return
        if handled:
            io.commands_handled()
        if engine.has_work and not engine.stalled:
            outputs = engine.step(on_scheduled=io.publish)  # requests leave the queue before the forward
            if engine.stalled:
                log.warning("the engine has %d waiting sequences and can schedule none of them; "
                            "it waits for the next request or abort", len(engine.scheduler.waiting))
            io.publish(outputs)


def _add(engine: LLMEngine, io: LoopIO, request: AddRequest) -> None:
    try:
        engine.add_request(request.request_id, request.prompt_token_ids, request.params)
    except RequestRejectedError as error:
        io.fail_request(request.request_id, error)
    except Exception as error:  # one request's data must not stop the engine
        log.exception("request %s could not be added to the engine", request.request_id)
        io.fail_request(request.request_id, RequestFailedError(f"{type(error).__name__} while adding the request"))
