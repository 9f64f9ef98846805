"""Runs the engine loop in a child process, so that the model step never shares a GIL with the
HTTP event loop (whose JSON and SSE work made every small PyTorch op wait to take it back).

The child (multiprocessing's spawn context) loads the model itself, builds its LLMEngine and runs
the loop on its main thread: commands come down one pipe, and each step's outputs go up another
as one message, with a fresh EngineStats snapshot (and a snapshot follows each batch of commands,
so that an abort's freed blocks show at once). The parent is an EngineClient: a reader thread
hands each message to the event loop, and stats() returns the latest snapshot.

Lifetime: the child ignores SIGINT and SIGTERM (a Ctrl-C or a group-wide SIGTERM is the parent's to
handle: it finishes the requests in flight first), exits on a stop command or when the parent's
end of the command pipe closes, and is killed by the kernel if the parent dies (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Protocol

import torch

from rillet.engine.config import EngineConfig
from rillet.engine.engine_client import EngineClient, EngineDeadError
from rillet.engine.engine_loop import STOP, run_engine_loop
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.outputs import RequestOutput
from rillet.engine.stats import EngineStats
from rillet.model.errors import ModelLoadError

log = logging.getLogger("rillet.engine")


class EngineStartError(RuntimeError):
    """The child process could not load the model or build its engine."""


class EngineSpec(Protocol):
    """What the child needs to build its engine; pickled to the child, so module-level and plain."""

    config: EngineConfig

    def build(self) -> tuple[LLMEngine, str]:
        """The engine, and the name of its weight format (for the system fingerprint)."""


@dataclass(slots=True, frozen=True)
class ModelEngineSpec:
    path: str
    weight_format: str
    config: EngineConfig

    def build(self) -> tuple[LLMEngine, str]:
        from rillet.model import load_model

        loaded = load_model(self.path, dtype=torch.float32, device=self.config.device,
                            weight_format=self.weight_format)
        engine = LLMEngine(loaded.model, loaded.tokenizer, loaded.config.max_context_len, self.config)
        return engine, loaded.model.weight_format


@dataclass(slots=True, frozen=True)
class EngineReady:
    """The child's first message once its engine is built."""

    max_model_len: int
    weight_format: str
    stats: EngineStats


class EngineProcess(EngineClient):
    """launch() and wait_ready() before the event loop runs; then start(), generate(), shutdown()."""

    def __init__(self, spec: EngineSpec, log_level: str = "INFO", log_format: str = logging.BASIC_FORMAT) -> None:
        super().__init__()
        self._spec = spec
        self._log_settings = (log_level, log_format)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._commands: Connection | None = None  # parent -> child
        self._outputs: Connection | None = None  # child -> parent
        self._stats: EngineStats | None = None
        self._alive = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_alive(self) -> bool:
        return self._alive

    def stats(self) -> EngineStats:
        return self._stats

    def launch(self) -> None:
        """Starts the child, which begins loading the model at once."""
        context = multiprocessing.get_context("spawn")
        child_commands, self._commands = context.Pipe(duplex=False)
        self._outputs, child_outputs = context.Pipe(duplex=False)
        _grow_pipe(self._commands)
        self._process = context.Process(
            target=_child_main, name="rillet-engine",
            args=(self._spec, child_commands, child_outputs, os.getpid(), self._log_settings))
        self._process.start()
        # Only the child holds its ends now, so its exit reads as EOF here and ours as EOF there.
        child_commands.close()
        child_outputs.close()

    def wait_ready(self) -> EngineReady:
        """Blocks until the child has built its engine; raises EngineStartError if it could not."""
        try:
            message = self._outputs.recv()
        except EOFError:
            self._process.join()
            raise EngineStartError(f"the engine process exited with code {self._process.exitcode} "
                                   "while loading the model") from None
        if message[0] != "ready":
            self._process.join()
            raise EngineStartError(message[1])
        ready: EngineReady = message[1]
        self._stats = ready.stats
        self._alive = True
        return ready

    def start(self) -> None:
        """Starts handing outputs to the running event loop; call from inside it."""
        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read_outputs, name="rillet-engine-outputs", daemon=True)
        self._reader.start()

    def shutdown(self, timeout: float = 10) -> None:
        """Stops the child (killed if it has not stopped within timeout seconds; 0 kills it at
        once) and waits for it to end."""
        self._stopping = True
        self._alive = False
        if self._process is None:
            return
        with contextlib.suppress(OSError):
            self._commands.send(STOP)
        self._process.join(timeout)
        if self._process.exitcode is None:
            if timeout > 0:
                log.warning("the engine process did not stop within %g s; killing it", timeout)
            self._process.kill()
            self._process.join()
        self._commands.close()
        if self._reader is not None:
            self._reader.join()  # it reads EOF now that the child is gone
        self._outputs.close()

    def _send_command(self, command: tuple) -> None:
        try:
            self._commands.send(command)
        except OSError:
            raise EngineDeadError("the engine process is gone") from None

    # -- the reader thread ----------------------------------------------------------

    def _read_outputs(self) -> None:
        reason = "the engine process exited unexpectedly"
        while True:
            try:
                message = self._outputs.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "outputs":
                self._stats = message[2]
                if message[1]:
                    self._on_loop(self._dispatch, message[1])
            elif kind == "stats":
                self._stats = message[1]
            elif kind == "failed":
                self._on_loop(self._dispatch_error, message[1], message[2])
            elif kind == "died":
                reason = message[1]
        if self._stopping:
            return
        self._alive = False
        self._process.join(timeout=5)
        log.error("%s (exit code %s); every request in flight fails", reason, self._process.exitcode)
        self._on_loop(self._fail_all, EngineDeadError(reason))

    def _on_loop(self, callback, *args) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(callback, *args)


def _grow_pipe(connection: Connection) -> None:
    """A 1 MiB pipe (Linux allows that much without privileges; the default is 64 KiB), so that a
    burst of requests arriving during a long step does not block the event loop on a full pipe."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


# -- the child process ----------------------------------------------------------------


def _child_main(spec: EngineSpec, commands: Connection, outputs: Connection, parent_pid: int,
                log_settings: tuple[str, str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    logging.basicConfig(level=log_settings[0], format=log_settings[1])
    torch.set_num_threads(spec.config.resolved_num_threads())
    try:
        engine, weight_format = spec.build()
    except ModelLoadError as error:
        outputs.send(("load_error", str(error)))
        sys.exit(1)
    except Exception as error:
        log.exception("the engine could not be built")
        outputs.send(("load_error", f"the engine could not be built: {type(error).__name__}: {error}"))
        sys.exit(1)
    outputs.send(("ready", EngineReady(engine.max_model_len, weight_format, engine.stats())))
    try:
        run_engine_loop(engine, _PipeIO(commands, outputs, engine))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent has gone; nobody wants the outputs
    except BaseException:
        log.exception("engine loop failed")
        with contextlib.suppress(OSError):
            outputs.send(("died", "the engine stopped on an internal error"))
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

    def receive(self, block: bool) -> tuple | None:
        if not block and not self._commands.poll():
            return None
        try:
            return self._commands.recv()
        except EOFError:
            return STOP

    def publish(self, outputs: list[RequestOutput]) -> None:
        self._outputs.send(("outputs", outputs, self._engine.stats()))

    def fail_request(self, request_id: str, error: Exception) -> None:
        self._outputs.send(("failed", request_id, error))

    def commands_handled(self) -> None:
        self._outputs.send(("stats", self._engine.stats()))
