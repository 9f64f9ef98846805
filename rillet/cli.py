"""Command line: `rillet serve` runs the OpenAI-compatible server; `rillet chat` talks to one
(rillet/chat/)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time

from rillet import launcher
from rillet.config import ServeConfig

# The API and the engine are imported where they are used: under multiprocessing's spawn, the
# engine's child process re-imports the script that started it, and needs none of them.

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    from rillet.chat.terminal import add_arguments as add_chat_arguments
    from rillet.config import add_arguments
    from rillet.model.weight_formats import WEIGHT_FORMATS

    parser = argparse.ArgumentParser(prog="rillet", description="OpenAI-compatible chat completions server")
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("serve", help="serve a model over the OpenAI Chat Completions API"),
                  choices={"weights": WEIGHT_FORMATS})
    add_chat_arguments(commands.add_parser("chat", help="chat with a model in the terminal"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chat"]:  # before anything imports torch or the engine, which a chat does not need
        from rillet.chat.terminal import main as chat

        return chat(argv[1:])
    from rillet.api.access_log import configure_access_log

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    configure_access_log(args.log_level.upper())
    if args.command == "serve":
        return serve(ServeConfig.from_args(args))
    return 2


def serve(settings: ServeConfig) -> int:
    # This process does no model compute: the engine runs in a child process (rillet/engine/engine_process.py).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from rillet.api.auth import KeyConfigError, KeyStore
    from rillet.engine.engine_process import EngineStartError
    from rillet.model import ModelLoadError

    try:
        env_keys = os.environ.get("RILLET_API_KEYS", "").split(",")
        keys = KeyStore.from_settings([*settings.api_key, *env_keys], settings.api_keys_file)
    except KeyConfigError as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 1
    if keys.is_open:
        print("rillet: no API key configured: the server is open to anyone who can reach it", file=sys.stderr)
    try:
        settings.admission_limits()
    except ValueError as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 2
    if settings.replicas is not None:
        from rillet.cluster.launch import serve_cluster

        path = os.path.abspath(launcher.model_path(settings))
        return serve_cluster(settings, keys, path, launcher.served_name(settings, path), LOG_FORMAT)
    if settings.ray_address or settings.cpus_per_replica:
        print("rillet: error: --ray-address and --cpus-per-replica go with --replicas", file=sys.stderr)
        return 2
    try:
        path = launcher.model_path(settings)
        engine, front, ready = _start_engine(path, settings)
    except (ModelLoadError, EngineStartError) as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(engine, front, ready, path, keys, settings))
    finally:
        engine.shutdown()


def _start_engine(path: str, settings: ServeConfig):
    """Starts the engine's child process, which loads the weights, while this process reads the
    tokenizer and chat template; returns once the engine is ready."""
    from rillet.model.loader import load_tokenizer_and_template, release_freed_memory

    started = time.perf_counter()
    engine = launcher.engine_process(settings, path, LOG_FORMAT)
    try:
        engine.launch()
        # After the launch, so that the engine process keeps the priority this one started with.
        os.nice(max(0, settings.http_nice))
        front = load_tokenizer_and_template(path)
        ready = engine.wait_ready()
    except BaseException:
        engine.shutdown(timeout=0)
        raise
    release_freed_memory()
    print(f"loaded {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return engine, front, ready


async def _serve(engine, front, ready, path: str, keys, settings: ServeConfig) -> int:
    from rillet.api import http_server

    name = launcher.served_name(settings, path)
    app = launcher.build_app(engine, settings, keys, front, path, name, ready.max_model_len, ready.weight_format)
    file_limit = http_server.raise_file_limit()
    max_connections = http_server.connection_cap(settings.max_connections, file_limit)
    if max_connections < settings.max_connections:
        print(f"rillet: the open-file limit of {file_limit} holds {max_connections} connections at once, "
              f"fewer than --max-connections {settings.max_connections}", file=sys.stderr, flush=True)
    http_server.install_log_limits()
    server = _graceful_server_class()(http_server.server_config(
        app, settings.host, settings.port, http_server.ConnectionLimits(settings.header_timeout, max_connections),
        settings.shutdown_grace))
    gave_up = []

    def give_up() -> None:
        print(f"rillet: error: the engine process died {settings.engine_restarts + 1} times within "
              f"{settings.engine_restart_window:g} s; exiting", file=sys.stderr, flush=True)
        gave_up.append(True)
        server.should_exit = True

    engine.on_give_up = give_up
    engine.start()
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        # What start-up made (modules, the tokenizer, the app) lives as long as the server: out of the
        # collector's sight, so that a full collection does not walk it (pauses of 50-90 ms under load).
        gc.collect()
        gc.freeze()
        print(f"rillet: serving {name} on http://{settings.host}:{settings.port}/v1", file=sys.stderr, flush=True)
        if settings.playground:
            print(f"rillet: playground at http://{settings.host}:{settings.port}/", file=sys.stderr, flush=True)
    await serving
    return 0 if server.started and not gave_up else 1


def _graceful_server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's own shutdown (stop listening, let in-flight requests finish within
        timeout_graceful_shutdown, cancel the rest), without re-raising the signal afterwards,
        so that a SIGTERM ends the process with status 0."""

        @contextlib.contextmanager
        def capture_signals(self):
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

        def handle_exit(self, sig: int, frame) -> None:
            if not self.should_exit:
                print(f"rillet: {signal.Signals(sig).name}: no new connections; finishing the requests in "
                      f"flight within {self.config.timeout_graceful_shutdown:g} s", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)

    return GracefulServer
