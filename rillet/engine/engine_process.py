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

A child that dies on its own (killed, out of memory, an engine failure) fails every request in
flight with EngineDeadError; the reader thread then launches a new one, and the engine is alive
again once it is ready. After more deaths within a window than RestartPolicy allows, it gives up
and calls on_give_up, so that the server can exit and a service manager restart it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Protocol

from rillet.config import DEFAULTS
from rillet.engine.config import EngineConfig
from rillet.engine.engine_child import child_main
from rillet.engine.engine_client import EngineDeadError, LoopClient
from rillet.engine.messages import (
    STOP,
    EngineCommand,
    EngineDied,
    EngineOutputs,
    EngineReady,
    EngineStartFailed,
    RequestFailed,
)
from rillet.engine.stats import EngineStats

if TYPE_CHECKING:  # the engine itself lives in the child process; this one never imports torch
    from rillet.engine.llm_engine import LLMEngine

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
        from rillet.engine.llm_engine import LLMEngine
        from rillet.model import load_model

        loaded = load_model(self.path, device=self.config.device,
                            weight_format=self.weight_format)
        engine = LLMEngine(loaded.model, loaded.tokenizer, loaded.config.max_context_len, self.config)
        return engine, loaded.model.weight_format


@dataclass(slots=True, frozen=True)
class RestartPolicy:
    """A dead engine process is replaced up to max_restarts times within window_seconds."""

    max_restarts: int = DEFAULTS.engine_restarts
    window_seconds: float = DEFAULTS.engine_restart_window


class EngineProcess(LoopClient):
    """launch() and wait_ready() before the event loop runs; then start(), generate(), shutdown()."""

    def __init__(self, spec: EngineSpec, log_level: str = "INFO", log_format: str = logging.BASIC_FORMAT,
                 restart_policy: RestartPolicy = RestartPolicy(),
                 on_give_up: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._spec = spec
        self._log_settings = (log_level, log_format)
        self._restart_policy = restart_policy
        # Called on the event loop when the engine process died more often than the policy allows.
        self.on_give_up = on_give_up
        self._deaths: deque[float] = deque()
        self.num_restarts = 0
        # Held while the child is replaced, so that shutdown() never misses a new child.
        self._lock = threading.Lock()
        self._launcher: concurrent.futures.ThreadPoolExecutor | None = None
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
        """Starts the child, which begins loading the model at once.

        Every child is started from one launcher thread, made by the first call: a child inherits the
        CPU priority (nice) of the thread that starts it, which on Linux is a thread's own, so a child
        that replaces a dead one keeps the priority the first had even after the caller has lowered
        its own (rillet serve's --http-nice)."""
        if self._launcher is None:
            self._launcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rillet-engine-launcher")
        self._launcher.submit(self._start_child).result()

    def _start_child(self) -> None:
        context = multiprocessing.get_context("spawn")
        child_commands, self._commands = context.Pipe(duplex=False)
        self._outputs, child_outputs = context.Pipe(duplex=False)
        _grow_pipe(self._commands)
        self._process = context.Process(
            target=child_main, name="rillet-engine",
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
        if not isinstance(message, EngineReady):
            self._process.join()
            raise EngineStartError(message.reason if isinstance(message, EngineStartFailed) else
                                   f"the engine process sent {type(message).__name__} before it was ready")
        ready = message
        self._stats = ready.stats
        self._alive = not self._stopping
        return ready

    def start(self) -> None:
        """Starts handing outputs to the running event loop; call from inside it."""
        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read_outputs, name="rillet-engine-outputs", daemon=True)
        self._reader.start()

    def shutdown(self, timeout: float = 10) -> None:
        """Stops the child (killed if it has not stopped within timeout seconds; 0 kills it at
        once) and waits for it to end."""
        with self._lock:
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
        if self._launcher is not None:
            self._launcher.shutdown(wait=False)

    def _send_command(self, command: EngineCommand) -> None:
        try:
            self._commands.send(command)
        except OSError:
            raise EngineDeadError("the engine process is gone") from None

    # -- the reader thread ----------------------------------------------------------

    def _read_outputs(self) -> None:
        """Hands the child's messages to the event loop; when a child dies, fails its requests and
        replaces it, or gives up."""
        while True:
            reason = self._read_until_exit()
            if self._stopping:
                return
            self._alive = False
            self._process.join(timeout=5)
            log.error("%s (exit code %s); every request in flight fails", reason, self._process.exitcode)
            self._on_loop_and_wait(self._fail_all, EngineDeadError(reason))
            if not self._restart():
                if not self._stopping:
                    self._on_loop(self._give_up)
                return

    def _read_until_exit(self) -> str:
        """Reads messages until the child's end of the pipe closes; returns why it closed."""
        reason = "the engine process exited unexpectedly"
        while True:
            try:
                message = self._outputs.recv()
            except (EOFError, OSError):
                break
            match message:
                case EngineOutputs(outputs=outputs, stats=stats):
                    self._stats = stats
                    if outputs:
                        self._on_loop(self._dispatch, outputs)
                case RequestFailed(request_id=request_id, error=error):
                    self._on_loop(self._dispatch_error, request_id, error)
                case EngineDied(reason=died):
                    reason = died
        return reason

    def _restart(self) -> bool:
        """Launches a new child and waits until it is ready; False when the policy says no more
        restarts, when the new child cannot start, or when shutdown() has begun."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - self._restart_policy.window_seconds:
            self._deaths.popleft()
        if len(self._deaths) > self._restart_policy.max_restarts:
            log.critical("the engine process died %d times within %g s; giving up", len(self._deaths),
                         self._restart_policy.window_seconds)
            return False
        with self._lock:
            if self._stopping:
                return False
            for connection in (self._commands, self._outputs):
                connection.close()
            log.warning("starting a new engine process")
            self.launch()
        try:
            self.wait_ready()
        except EngineStartError as error:
            if not self._stopping:
                log.critical("the new engine process could not start: %s", error)
            return False
        self.num_restarts += 1
        log.warning("the new engine process is ready, %.1f s after the last one died", time.monotonic() - now)
        return True

    def _give_up(self) -> None:
        if self.on_give_up is not None:
            self.on_give_up()

    def _on_loop(self, callback, *args) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(callback, *args)

    def _on_loop_and_wait(self, callback, *args) -> None:
        """Runs callback on the event loop and waits until it has run (or the loop is gone)."""
        done = threading.Event()

        def run() -> None:
            try:
                callback(*args)
            finally:
                done.set()

        self._on_loop(run)
        done.wait(timeout=10)


def _grow_pipe(connection: Connection) -> None:
    """A 1 MiB pipe (Linux allows that much without privileges; the default is 64 KiB), so that a
    burst of requests arriving during a long step does not block the event loop on a full pipe."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
