"""The engine process's own side: build the engine, then run the loop over two pipes
(see rillet/engine/engine_process.py for the parent's side and the lifetime rules)."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
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
    try:
        run_engine_loop(engine, _PipeIO(commands, outputs, engine))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent has gone; nobody wants the outputs
    except BaseException:
        log.exception("engine loop failed")
        with contextlib.suppress(OSError):
            outputs.send(EngineDied("the engine stopped on an internal error"))
        sys.exit(1)


def _die_with_parent(parent_pid: int) -> None:
    """Asks Linux to SIGKILL this process when its parent dies, however the parent dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the request above took effect
        os._exit(1)


class _PipeIO:
    """The loop's side in the child: commands from the parent's pipe, results up the other."""

    def __init__(self, commands: Connection, outputs: Connection, engine: LLMEngine) -> None:
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
