"""The engine process's own side: build the engine, then run the loop over two pipes
(see rillet/engine/engine_process.py for the parent's side and the lifetime rules)."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING

from rillet.engine.engine_loop import run_engine_loop
from rillet.engine.messages import (
    STOP,
    EngineCommand,
    EngineDied,
    EngineOutputs,
    EngineReady,
    EngineStartFailed,
    RequestFailed,
)
from rillet.engine.outputs import RequestOutput
from rillet.model.errors import ModelLoadError

if TYPE_CHECKING:
    from rillet.engine.llm_engine import LLMEngine

log = logging.getLogger("rillet.engine")


def child_main(spec, commands: Connection, outputs: Connection, parent_pid: int,
               log_settings: tuple[str, str]) -> None:
    """The child's entry point: `spec` (an EngineSpec) builds the engine."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    logging.basicConfig(level=log_settings[0], format=log_settings[1])
    import torch  # here, in the child: the parent (the API process) never imports it

    torch.set_num_threads(spec.config.resolved_num_threads())
    try:
        engine, weight_format = spec.build()
    except ModelLoadError as error:
        outputs.send(EngineStartFailed(str(error)))
        sys.exit(1)
    except Exception as error:
        log.exception("the engine could not be built")
        outputs.send(EngineStartFailed(f"the engine could not be built: {type(error).__name__}: {error}"))
        sys.exit(1)
    # The model, the engine and every module live as long as the process: out of the collector's sight.
    gc.collect()
    gc.freeze()
    outputs.send(EngineReady(engine.max_model_len, weight_format, engine.stats(), engine.cacheable_blocks))
    sender = Sender(outputs)
    try:
        run_engine_loop(engine, _PipeIO(commands, sender, engine))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent has gone; nobody wants the outputs
    except BaseException:
        log.exception("engine loop failed")
        sender.close()  # the outputs before the failure first
        with contextlib.suppress(OSError):
            outputs.send(EngineDied("the engine stopped on an internal error"))
        sys.exit(1)
    finally:
        sender.close()


def _die_with_parent(parent_pid: int) -> None:
    """Asks Linux to SIGKILL this process when its parent dies, however the parent dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the request above took effect
        os._exit(1)


class Sender:
    """Writes messages up a pipe from a thread of its own, in the order they were sent.

    The caller pickles each message as it sends it (the step's objects as they are then); the thread
    only writes. A write wakes the HTTP process's reader, and at one stream it took about 0.16 ms of the
    engine's 4.5 ms step; on this thread it overlaps the next step. At most `backlog` messages wait:
    past that, send() blocks, as the pipe itself does once the reader stops reading. A failed write
    (the parent gone) is raised by the next send()."""

    def __init__(self, connection: Connection, backlog: int = 64) -> None:
        self._connection = connection
        self._queue: queue.Queue[bytes | None] = queue.Queue(backlog)
        self._error: OSError | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._write, name="rillet-engine-sender", daemon=True)
        self._thread.start()

    def send(self, message: object) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(ForkingPickler.dumps(message))

    def close(self) -> None:
        """Returns once every message sent before it is written (or the pipe has failed)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _write(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:  # after a failure, drained unwritten so that close() returns
                try:
                    self._connection.send_bytes(data)
                except OSError as error:
                    self._error = error


class _PipeIO:
    """The loop's side in the child: commands from the parent's pipe, results up the other."""

    def __init__(self, commands: Connection, outputs: Sender, engine: LLMEngine) -> None:
        self._commands = commands
        self._outputs = outputs
        self._engine = engine

    def receive(self, block: bool) -> EngineCommand | None:
        if not block and not self._commands.poll():
            return None
        try:
            return self._commands.recv()
        except EOFError:
            return STOP

    def publish(self, outputs: list[RequestOutput]) -> None:
        self._outputs.send(EngineOutputs(outputs, self._engine.stats()))

    def fail_request(self, request_id: str, error: Exception) -> None:
        self._outputs.send(RequestFailed(request_id, error))

    def commands_handled(self) -> None:
        self._outputs.send(EngineOutputs([], self._engine.stats()))
