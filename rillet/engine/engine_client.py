"""EngineClient, what the API needs of an engine (rillet.api.app.create_app takes one), and
LoopClient, the asyncio side of an engine loop that runs elsewhere (a thread or a child process):
each request gets an async iterator of its outputs, fed through its own queue, and an abort is sent
when the consumer stops before the request has finished.

The clients: AsyncEngine (the loop on a thread), EngineProcess (in a child process), and the
cluster's ClusterEngineClient (rillet/cluster/client.py: replicas behind Ray Serve)."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from rillet.engine.errors import RequestFailedError
from rillet.engine.messages import AbortRequest, AddRequest, EngineCommand
from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stats import EngineStats


class EngineDeadError(RuntimeError):
    """The engine loop stopped on an unexpected error; no request can be served."""


@runtime_checkable
class EngineClient(Protocol):
    """An engine as the API sees it."""

    @property
    def is_alive(self) -> bool:
        """Requests can be served now (a dead engine process may be on its way back)."""

    def stats(self) -> EngineStats | None:
        """The engine's latest figures, for /metrics (None before an engine process is ready)."""

    def generate(self, request_id: str, prompt_token_ids: list[int],
                 params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """The request's outputs, one per engine step that has something for it, the last one
        finished; raises EngineDeadError when no engine can serve it, and the request's own
        errors (rillet/engine/errors.py). Closing it early aborts the request."""


class _OutputStream:
    """One request's outputs on their way from _dispatch to its generate(): a deque, and a future
    while generate() waits for the deque to fill. asyncio.Queue does the same with more bookkeeping
    (getter and putter deques, an unfinished-task count, a coroutine per get), and this hand-off
    happens once per streamed token."""

    __slots__ = ("_waiter", "items")

    def __init__(self) -> None:
        self.items: deque[RequestOutput | BaseException] = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, item: RequestOutput | BaseException) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # done: its waiter was cancelled
                waiter.set_result(None)

    def arrival(self) -> asyncio.Future:
        """A future that is done when the next item is put."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter


class LoopClient(EngineClient):
    """Subclasses send commands to their loop (see rillet/engine/engine_loop.py) and call
    _dispatch, _dispatch_error and _fail_all on the event loop as results come back."""

    def __init__(self) -> None:
        self._streams: dict[str, _OutputStream] = {}

    @property
    def is_alive(self) -> bool:
        raise NotImplementedError

    def stats(self) -> EngineStats:
        raise NotImplementedError

    def _send_command(self, command: EngineCommand) -> None:
        """Hands a command to the loop; raises EngineDeadError when the loop is gone."""
        raise NotImplementedError

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        if not self.is_alive:
            raise EngineDeadError("the engine is not running")
        stream = self._streams[request_id] = _OutputStream()
        items = stream.items
        finished = False
        try:
            self._send_command(AddRequest(request_id, prompt_token_ids, params))
            while not finished:
                while not items:
                    await stream.arrival()
                item = items.popleft()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                with contextlib.suppress(EngineDeadError):
                    self._send_command(AbortRequest(request_id))

    # -- on the event loop, as results come back -----------------------------------

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output if output.error is None else RequestFailedError(output.error))

    def _dispatch_error(self, request_id: str, error: Exception) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(error)

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put(error)
