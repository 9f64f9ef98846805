"""Runs the engine loop on a thread of this process, for in-process uses (tests, embedding);
`rillet serve` runs it in a child process instead (rillet/engine/engine_process.py).

The event loop only enqueues commands and receives outputs; it never waits on a model step.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading

import torch

from rillet.engine.engine_client import EngineDeadError, LoopClient
from rillet.engine.engine_loop import run_engine_loop
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.messages import STOP, EngineCommand
from rillet.engine.outputs import RequestOutput
from rillet.engine.stats import EngineStats

__all__ = ["AsyncEngine", "EngineDeadError"]

log = logging.getLogger("rillet.engine")


class AsyncEngine(LoopClient):
    def __init__(self, engine: LLMEngine, num_threads: int) -> None:
        super().__init__()
        self.engine = engine
        self._num_threads = num_threads
        self._commands: queue.SimpleQueue[EngineCommand] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._dead_error: BaseException | None = None

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead_error is None

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def start(self) -> None:
        """Starts the loop thread; call from inside the event loop that will consume outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="rillet-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._commands.put(STOP)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _send_command(self, command: EngineCommand) -> None:
        self._commands.put(command)

    # -- the engine thread ----------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self._num_threads)
        try:
            run_engine_loop(self.engine, _ThreadIO(self._commands, self._loop, self))
        except BaseException as error:  # the loop must report any failure, then stop
            log.exception("engine loop failed")
            self._dead_error = error
            dead = EngineDeadError("the engine stopped on an internal error")
            self._loop.call_soon_threadsafe(self._fail_all, dead)


class _ThreadIO:
    """The loop's side: commands from a queue, results handed to the event loop."""

    def __init__(self, commands: queue.SimpleQueue, loop: asyncio.AbstractEventLoop, client: LoopClient) -> None:
        self._commands = commands
        self._loop = loop
        self._client = client

    def receive(self, block: bool) -> EngineCommand | None:
        try:
            return self._commands.get(block=block)
        except queue.Empty:
            return None

    def publish(self, outputs: list[RequestOutput]) -> None:
        if outputs:
            self._loop.call_soon_threadsafe(self._client._dispatch, outputs)

    def fail_request(self, request_id: str, error: Exception) -> None:
        self._loop.call_soon_threadsafe(self._client._dispatch_error, request_id, error)

    def commands_handled(self) -> None:
        pass  # stats() reads the engine itself
