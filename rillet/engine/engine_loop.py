"""The engine loop: commands in, one batched model step at a time, outputs out.

The same loop runs on a thread beside the event loop (AsyncEngine) or on the main thread of a
child process (EngineProcess); only how commands arrive and outputs leave differs (LoopIO).
Commands are tuples: ("add", request_id, prompt_token_ids, params), ("abort", request_id), ("stop",).
"""
from __future__ import annotations

from typing import Protocol

from rillet.engine.llm_engine import LLMEngine
from rillet.engine.outputs import RequestOutput

STOP = ("stop",)


class LoopIO(Protocol):
    def receive(self, block: bool) -> tuple | None:
        """The next command; None when none waits and block is False; STOP when the sender is gone."""

    def publish(self, outputs: list[RequestOutput]) -> None:
        """One step's outputs (possibly none: a prefill chunk samples nothing)."""

    def fail_request(self, request_id: str, error: Exception) -> None:
        """A request the engine refused (a ValueError such as PromptTooLongError)."""

    def commands_handled(self) -> None:
        """Commands changed the engine's state (an abort freed blocks, an add queued a request)."""


def run_engine_loop(engine: LLMEngine, io: LoopIO) -> None:
    """Runs until a stop command (or the command source closing); an error in a step propagates."""
    while True:
        block = not engine.has_work
        handled = False
        while (command := io.receive(block)) is not None:
            block, handled = False, True
            kind = command[0]
            if kind == "add":
                _, request_id, prompt_token_ids, params = command
                try:
                    engine.add_request(request_id, prompt_token_ids, params)
                except ValueError as error:
                    io.fail_request(request_id, error)
            elif kind == "abort":
                engine.abort_request(command[1])
            elif kind == "stop":
                return
        if handled:
            io.commands_handled()
        if engine.has_work:
            io.publish(engine.step())
