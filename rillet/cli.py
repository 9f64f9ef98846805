"""Command line: `rillet serve` runs the OpenAI-compatible server; `rillet chat` talks to one
(rillet/chat.py)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import signal
import sys
import time

# The API and the engine are imported where they are used: under multiprocessing's spawn, the
# engine's child process re-imports the script that started it, and needs none of them.

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    from rillet.api import admission, http_server
    from rillet.api.body_limit import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_REQUEST_BYTES
    from rillet.engine.engine_process import RestartPolicy
    from rillet.model.weight_formats import DEFAULT_WEIGHT_FORMAT, WEIGHT_FORMATS

    parser = argparse.ArgumentParser(prog="rillet", description="OpenAI-compatible chat completions server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model over the OpenAI Chat Completions API")
    serve.add_argument("--model", help="a GGUF file or a Hugging Face llama model folder "
                       "(default: the embedded SmolLM2-135M-Instruct Q4_1)")
    serve.add_argument("--served-model-name", help="the model name clients ask for "
                       f"(default: {DEFAULT_MODEL_NAME} for the embedded model, else the file name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    serve.add_argument("--kv-cache-tokens", type=_positive_int, default=16384,
                       help="KV cache capacity in tokens, shared by all sequences (default: 16384; "
                       "the default model needs 23 KiB a token in float16)")
    serve.add_argument("--kv-cache-dtype", default="float16", choices=["float16", "float32"],
                       help="element type of the KV cache: float16 halves its memory; attention still "
                       "computes in float32 (default: float16)")
    serve.add_argument("--max-num-seqs", type=_positive_int, default=64,
                       help="sequences decoded at once (default: 64)")
    serve.add_argument("--max-num-batched-tokens", type=_positive_int, default=256,
                       help="tokens computed per step: the prefill chunk size (default: 256)")
    serve.add_argument("--block-size", type=_positive_int, default=16, help="tokens per KV block (default: 16)")
    serve.add_argument("--weights", default=DEFAULT_WEIGHT_FORMAT, choices=WEIGHT_FORMATS,
                       help="how the linear layers hold their weights: quantized (the GGUF file's Q4_0, Q4_1, "
                       "Q8_0, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K blocks as stored, multiplied by a native CPU kernel at "
                       "the file's exact values; other matrices in float16, named in the log), quantized-int8x2 (the "
                       "same blocks, activations rounded twice to int8, about 16 bits: integer products, within "
                       "1e-4 of exact), quantized-int8 (activations rounded once to int8 per block of 32 as "
                       "llama.cpp does: fastest, not exact), float16 (rounded, FBGEMM), or float32 "
                       f"(exact dequantized file) (default: {DEFAULT_WEIGHT_FORMAT})")
    serve.add_argument("--no-prefix-caching", action="store_true", help="turn prefix caching off")
    serve.add_argument("--threads", type=_positive_int, default=None,
                       help="compute threads of the model step (default: one per core)")
    serve.add_argument("--http-nice", type=int, default=10, metavar="N",
                       help="how much CPU priority (nice) the HTTP server process gives up to the engine process, "
                       "so that HTTP work does not stall the model step's threads on a machine with few cores; "
                       "0 keeps them equal (default: 10)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require this API key on /v1/* (repeatable; also RILLET_API_KEYS, comma-separated)")
    serve.add_argument("--api-keys-file", metavar="PATH",
                       help="a TOML file of [[keys]] with key (or key_sha256), optional id and models")
    serve.add_argument("--public-metrics", action="store_true",
                       help="serve /metrics without a key on a server with keys (default: a key is needed)")
    serve.add_argument("--public-openapi", action="store_true",
                       help="serve /openapi.json without a key on a server with keys (default: a key is needed)")
    limits = serve.add_argument_group("limits and admission")
    limits.add_argument("--rate-limit-rpm", type=_positive_int, default=None, metavar="N",
                        help="requests per minute per key, a token bucket (default: unlimited; "
                        "a keys file's rpm overrides it per key; an open server shares one bucket)")
    limits.add_argument("--rate-limit-tpm", type=_positive_int, default=None, metavar="N",
                        help="tokens per minute per key: prompt plus max_tokens reserved up front, the "
                        "unused part given back at the end (default: unlimited; a keys file's tpm overrides it)")
    limits.add_argument("--max-queued-requests", type=_positive_int, default=admission.DEFAULT_MAX_QUEUED_REQUESTS,
                        metavar="N", help="requests that may wait for their first token; more get a 503 "
                        f"overloaded (default: {admission.DEFAULT_MAX_QUEUED_REQUESTS})")
    limits.add_argument("--max-queued-tokens", type=_positive_int, default=admission.DEFAULT_MAX_QUEUED_TOKENS,
                        metavar="N", help="prompt tokens that may wait for their first token; more get a 503 "
                        f"overloaded (default: {admission.DEFAULT_MAX_QUEUED_TOKENS})")
    limits.add_argument("--queue-timeout", type=float, default=admission.DEFAULT_QUEUE_TIMEOUT, metavar="SECONDS",
                        help="a request the engine has not begun to run after this long is aborted with a 503 "
                        f"overloaded; computing its prompt does not count (default: {admission.DEFAULT_QUEUE_TIMEOUT:g})")
    limits.add_argument("--max-request-bytes", type=_positive_int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                        help="largest request body; a larger one is a 413, refused before it is read "
                        f"(default: {DEFAULT_MAX_REQUEST_BYTES}, 4 MiB)")
    limits.add_argument("--max-seqs-per-request", type=_positive_int, default=None, metavar="N",
                        help="the largest n (choices) of one request; more is a 422 (default: a quarter of "
                        "--max-num-seqs, so that one request leaves room for others)")
    limits.add_argument("--max-seqs-per-key", type=_positive_int, default=None, metavar="N",
                        help="sequences one API key may have in flight; its further requests wait in the queue "
                        "(default: half of --max-num-seqs; an open server has no keys, and no such share)")
    limits.add_argument("--header-timeout", type=_positive_float, default=http_server.DEFAULT_HEADER_TIMEOUT,
                        metavar="SECONDS", help="a request's head must arrive within this long of its connection "
                        f"(or of the answer before it), or the connection is closed (default: "
                        f"{http_server.DEFAULT_HEADER_TIMEOUT:g})")
    limits.add_argument("--body-timeout", type=_positive_float, default=DEFAULT_BODY_TIMEOUT, metavar="SECONDS",
                        help="a request's body must arrive within this long of its head, or it is a 408 "
                        f"(default: {DEFAULT_BODY_TIMEOUT:g})")
    limits.add_argument("--max-connections", type=_positive_int, default=http_server.DEFAULT_MAX_CONNECTIONS,
                        metavar="N", help="connections held at once; one more is answered with a 503 at once "
                        f"(default: {http_server.DEFAULT_MAX_CONNECTIONS}, or fewer where the open-file limit, "
                        "raised to its hard limit at start, is lower)")
    restarts = RestartPolicy()
    serve.add_argument("--engine-restarts", type=int, default=restarts.max_restarts, metavar="N",
                       help="how often a dead engine process is replaced within --engine-restart-window; one "
                       f"more death there exits the server with status 1 (default: {restarts.max_restarts})")
    serve.add_argument("--engine-restart-window", type=float, default=restarts.window_seconds, metavar="SECONDS",
                       help=f"the window of --engine-restarts (default: {restarts.window_seconds:g})")
    serve.add_argument("--shutdown-grace", type=float, default=30, metavar="SECONDS",
                       help="on SIGTERM or SIGINT, stop accepting connections and give in-flight requests "
                       "this long to finish before cancelling them; then exit 0 (default: 30)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    browsers = serve.add_argument_group("browsers")
    browsers.add_argument("--no-playground", action="store_true",
                          help="do not serve the chat playground page at / (default: served)")
    browsers.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                          help="let web pages of this origin (such as https://app.example.com) call the API "
                          "from a browser; repeatable, * for any (default: none)")
    browsers.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                          help="a host name the server answers to besides localhost and IP addresses; a server on "
                          "a loopback address (or any server given one) answers any other Host with a 403, "
                          "against DNS rebinding; repeatable, * for any (default: none)")
    cluster = serve.add_argument_group("more than one machine (Ray Serve; pip install 'rillet[cluster]')")
    cluster.add_argument("--replicas", type=_positive_int, default=None, metavar="N",
                         help="serve through Ray Serve with N engine replicas, each its own model and KV cache, "
                         "routed by prompt prefix (default: one engine, no Ray)")
    cluster.add_argument("--ray-address", metavar="ADDRESS",
                         help="with --replicas: join this Ray cluster (such as 10.0.0.5:6379, or auto) "
                         "instead of starting a local one")
    cluster.add_argument("--cpus-per-replica", type=float, default=None, metavar="N",
                         help="with --replicas: Ray CPUs each replica takes (default: --threads, or one per "
                         "core); with --device cuda each replica takes one GPU")
    from rillet.chat import add_arguments as add_chat_arguments

    add_chat_arguments(commands.add_parser("chat", help="chat with a model in the terminal"))
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def admission_limits(args: argparse.Namespace, max_num_seqs: int):
    """The admission bounds of the flags, with the sequence shares' defaults; raises ValueError
    for shares that could never let a request run."""
    from rillet.api import admission

    per_request, per_key = admission.default_sequence_shares(max_num_seqs)
    per_request = args.max_seqs_per_request or min(per_request, args.max_seqs_per_key or per_request)
    per_key = args.max_seqs_per_key or max(per_key, per_request)
    if per_request > max_num_seqs:
        raise ValueError(f"--max-seqs-per-request {per_request} is more than --max-num-seqs {max_num_seqs}")
    if per_key < per_request:
        raise ValueError(f"--max-seqs-per-key {per_key} is less than --max-seqs-per-request {per_request}: "
                         "a request of that many choices could never run")
    return admission.AdmissionLimits(args.max_queued_requests, args.max_queued_tokens, args.queue_timeout,
                                     per_request, per_key)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chat"]:  # before anything imports torch or the engine, which a chat does not need
        from rillet.chat import main as chat

        return chat(argv[1:])
    from rillet.api.access_log import configure_access_log

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    configure_access_log(args.log_level.upper())
    if args.command == "serve":
        return serve(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    # This process does no model compute: the engine runs in a child process (rillet/engine/engine_process.py).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from rillet.api.auth import KeyConfigError, KeyStore
    from rillet.engine.config import EngineConfig
    from rillet.engine.engine_process import EngineStartError
    from rillet.model import ModelLoadError, default_model_path
    from rillet.model.loader import file_fingerprint

    try:
        env_keys = os.environ.get("RILLET_API_KEYS", "").split(",")
        keys = KeyStore.from_settings([*args.api_key, *env_keys], args.api_keys_file)
    except KeyConfigError as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 1
    if keys.is_open:
        print("rillet: no API key configured: the server is open to anyone who can reach it", file=sys.stderr)
    try:
        admission_limits(args, args.max_num_seqs)
    except ValueError as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 2
    config = EngineConfig(
        device=args.device, kv_cache_dtype=args.kv_cache_dtype, block_size=args.block_size,
        kv_cache_tokens=args.kv_cache_tokens, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads,
    )
    if args.replicas is not None:
        from rillet.cluster.launch import serve_cluster

        path = args.model or default_model_path()
        name = args.served_model_name or (DEFAULT_MODEL_NAME if not args.model else _name_from_path(path))
        return serve_cluster(args, keys, config, os.path.abspath(path), name, LOG_FORMAT)
    if args.ray_address or args.cpus_per_replica:
        print("rillet: error: --ray-address and --cpus-per-replica go with --replicas", file=sys.stderr)
        return 2
    try:
        path = args.model or default_model_path()
        engine, front, ready = _start_engine(path, args, config)
    except (ModelLoadError, EngineStartError) as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 1
    name = args.served_model_name or (DEFAULT_MODEL_NAME if not args.model else _name_from_path(path))
    fingerprint = "fp_" + hashlib.sha256(
        f"{file_fingerprint(path)} weights={ready.weight_format} {config.describe()}".encode()).hexdigest()[:12]
    try:
        return asyncio.run(_serve(engine, front, ready.max_model_len, name, fingerprint, keys, config, args))
    finally:
        engine.shutdown()


def _start_engine(path: str, args: argparse.Namespace, config):
    """Starts the engine's child process, which loads the weights, while this process reads the
    tokenizer and chat template; returns once the engine is ready."""
    from rillet.engine.engine_process import EngineProcess, ModelEngineSpec, RestartPolicy
    from rillet.model.loader import load_tokenizer_and_template, release_freed_memory

    started = time.perf_counter()
    engine = EngineProcess(ModelEngineSpec(path, args.weights, config), args.log_level.upper(), LOG_FORMAT,
                           RestartPolicy(max(0, args.engine_restarts), args.engine_restart_window))
    try:
        engine.launch()
        # After the launch, so that the engine process keeps the priority this one started with.
        os.nice(max(0, args.http_nice))
        front = load_tokenizer_and_template(path)
        ready = engine.wait_ready()
    except BaseException:
        engine.shutdown(timeout=0)
        raise
    release_freed_memory()
    print(f"loaded {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return engine, front, ready


async def _serve(engine, front, max_context_len: int, name: str, fingerprint: str, keys, config,
                 args: argparse.Namespace) -> int:
    from rillet.api import http_server
    from rillet.api.app import create_app
    from rillet.api.rate_limit import RateLimiter
    from rillet.api.request_head import HostCheck
    from rillet.api.served_model import ServedModel

    served = ServedModel(name=name, tokenizer=front.tokenizer, chat_template=front.chat_template,
                         max_context_len=max_context_len, max_num_seqs=config.max_num_seqs,
                         fingerprint=fingerprint, created=int(time.time()), architecture=front.config.architecture)
    public_paths = frozenset(path for path, public in (("/metrics", args.public_metrics),
                                                       ("/openapi.json", args.public_openapi)) if public)
    app = create_app(engine, served, keys, RateLimiter(args.rate_limit_rpm, args.rate_limit_tpm),
                     admission_limits(args, config.max_num_seqs), max_request_bytes=args.max_request_bytes,
                     public_paths=public_paths, playground=not args.no_playground,
                     cors_origins=tuple(args.cors_origin),
                     host_check=HostCheck.for_server(args.host, args.allowed_host), body_timeout=args.body_timeout)
    file_limit = http_server.raise_file_limit()
    max_connections = http_server.connection_cap(args.max_connections, file_limit)
    if max_connections < args.max_connections:
        print(f"rillet: the open-file limit of {file_limit} holds {max_connections} connections at once, "
              f"fewer than --max-connections {args.max_connections}", file=sys.stderr, flush=True)
    http_server.install_log_limits()
    server = _graceful_server_class()(http_server.server_config(
        app, args.host, args.port, http_server.ConnectionLimits(args.header_timeout, max_connections),
        args.shutdown_grace))
    gave_up = []

    def give_up() -> None:
        print(f"rillet: error: the engine process died {args.engine_restarts + 1} times within "
              f"{args.engine_restart_window:g} s; exiting", file=sys.stderr, flush=True)
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
        print(f"rillet: serving {name} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
        if not args.no_playground:
            print(f"rillet: playground at http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
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


def _name_from_path(path: str) -> str:
    from pathlib import Path

    stem = Path(path).name
    return stem[:-5] if stem.endswith(".gguf") else stem
