"""Command line: `rillet serve` runs the OpenAI-compatible server."""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
import time

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def build_parser() -> argparse.ArgumentParser:
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
    serve.add_argument("--kv-cache-tokens", type=int, default=16384,
                       help="KV cache capacity in tokens, shared by all sequences (default: 16384; "
                       "the default model needs 46 KiB a token)")
    serve.add_argument("--max-num-seqs", type=int, default=64,
                       help="sequences decoded at once (default: 64)")
    serve.add_argument("--max-num-batched-tokens", type=int, default=256,
                       help="tokens computed per step: the prefill chunk size (default: 256)")
    serve.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default: 16)")
    serve.add_argument("--no-prefix-caching", action="store_true", help="turn prefix caching off")
    serve.add_argument("--threads", type=int, default=None,
                       help="compute threads of the model step (default: one per core)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require this API key on /v1/* (repeatable; also RILLET_API_KEYS, comma-separated)")
    serve.add_argument("--api-keys-file", metavar="PATH",
                       help="a TOML file of [[keys]] with key (or key_sha256), optional id and models")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    import torch

    from rillet.api.auth import KeyConfigError, KeyStore
    from rillet.engine.config import EngineConfig
    from rillet.model import ModelLoadError, default_model_path, load_model

    try:
        env_keys = os.environ.get("RILLET_API_KEYS", "").split(",")
        keys = KeyStore.from_settings([*args.api_key, *env_keys], args.api_keys_file)
    except KeyConfigError as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 1
    if keys.is_open:
        print("rillet: no API key configured: the server is open to anyone who can reach it", file=sys.stderr)
    try:
        path = args.model or default_model_path()
        started = time.perf_counter()
        loaded = load_model(path, dtype=torch.float32, device=args.device)
    except ModelLoadError as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 1
    print(f"loaded {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    name = args.served_model_name or (DEFAULT_MODEL_NAME if not args.model else _name_from_path(path))
    config = EngineConfig(
        device=args.device, dtype=torch.float32, block_size=args.block_size,
        kv_cache_tokens=args.kv_cache_tokens, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads,
    )
    return asyncio.run(_serve(loaded, name, config, keys, args.host, args.port))


async def _serve(loaded, name: str, config, keys, host: str, port: int) -> int:
    import uvicorn

    from rillet.api.app import create_app
    from rillet.api.served_model import ServedModel
    from rillet.engine.async_engine import AsyncEngine
    from rillet.engine.llm_engine import LLMEngine

    engine = LLMEngine(loaded.model, loaded.tokenizer, loaded.config.max_context_len, config)
    async_engine = AsyncEngine(engine, config.resolved_num_threads())
    fingerprint = "fp_" + hashlib.sha256(
        f"{loaded.file_fingerprint} {config.describe()}".encode()).hexdigest()[:12]
    served = ServedModel(name=name, tokenizer=loaded.tokenizer, chat_template=loaded.chat_template,
                         max_context_len=engine.max_model_len, fingerprint=fingerprint, created=int(time.time()))
    app = create_app(async_engine, served, keys)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    async_engine.start()
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(f"rillet: serving {name} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    await serving
    async_engine.shutdown()
    return 0 if server.started else 1


def _name_from_path(path: str) -> str:
    from pathlib import Path

    stem = Path(path).name
    return stem[:-5] if stem.endswith(".gguf") else stem
