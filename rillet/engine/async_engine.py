"""Runs the engine loop on its own thread and gives each request an async iterator of deltas.

The HTTP event loop only enqueues commands and receives outputs; it never waits on a
model step. Aborts and new requests are drained between steps.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

import torch

from rillet.engine.llm_engine import LLMEngine
from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stats import EngineStats

log = logging.getLogger("rillet.engine")


class EngineDeadError(RuntimeError):
    """The engine loop stopped on an unexpected error; no request can be served."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine, num_threads: int) -> None:
        self.engine = engine
        self._num_threads = num_threads
        self._commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead_error: BaseException | None = None

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead_error is None

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def start(self) -> None:
        """Starts the loop thread; call from inside the event loop that will consume outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run_loop, name="rillet-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        self._commands.put(("stop",))
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        if not self.is_alive:
            raise EngineDeadError("the engine is not running")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = stream
        self._commands.put(("add", request_id, prompt_token_ids, params))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._commands.put(("abort", request_id))

    # -- the engine thread ----------------------------------------------------------

    def _run_loop(self) -> None:
        torch.set_num_threads(self._num_threads)
        try:
            while not self._stopping:
                self._drain_commands(block=not self.engine.has_work)
                if self._stopping:
                    break
                outputs = self.engine.step()
                if outputs:
                    self._send(outputs)
        except BaseException as error:  # the loop must report any failure, then stop
            log.exception("engine loop failed")
            self._dead_error = error
            dead = EngineDeadError("the engine stopped on an internal error")
            self._loop.call_soon_threadsafe(self._fail_all, dead)

    def _drain_commands(self, block: bool) -> None:
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return
            block = False
            kind = command[0]
            if kind == "add":
                _, request_id, prompt_token_ids, params = command
                try:
                    self.engine.add_request(request_id, prompt_token_ids, params)
                except ValueError as error:
                    self._send([error], request_id)
            elif kind == "abort":
                self.engine.abort_request(command[1])
            elif kind == "stop":
                return

    def _send(self, items: list, request_id: str | None = None) -> None:
        self._loop.call_soon_threadsafe(self._dispatch, items, request_id)

    def _dispatch(self, items: list, request_id: str | None) -> None:
        for item in items:
            stream = self._streams.get(request_id if request_id is not None else item.request_id)
            if stream is not None:
                stream.put_nowait(item)

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put_nowait(error)
