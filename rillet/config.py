"""Every default of `rillet serve` in one dataclass: the engine's, the server's and the cluster's.

The command line is built from it (rillet/cli.py: a field is a flag, with its help, its default and
how the help says that default), each layer's own defaults read DEFAULTS (EngineConfig,
AdmissionLimits, RestartPolicy, the body and connection limits, the weight format), and
tests/test_config.py fails where any of them, or the README's table of flags, says otherwise.

Nothing of rillet is imported here at module level: the engine, the API and the chat client all
read it, and a chat must start without torch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# The argument groups of `rillet serve --help`, in order; a field without one is in the main list.
GROUPS = {
    "limits": "limits and admission",
    "browsers": "browsers",
    "cluster": "more than one machine (Ray Serve; pip install 'rillet[cluster]')",
}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def option(default: Any, help: str, *, flag: str | None = None, type: Any = None, choices: tuple | None = None,
           metavar: str | None = None, shown: str | None = None, group: str | None = None,
           repeatable: bool = False) -> Any:
    """A field and its flag: `--name-with-dashes` unless flag names it; a bool is a switch (its flag
    turns it to the other value); repeatable collects every use into a tuple. shown: how the help
    says the default where its value alone would not ("one per core"; "{default}" stands for the
    value); "" leaves it out."""
    return field(default=default, metadata={
        "help": help, "flag": flag, "type": type, "choices": choices, "metavar": metavar, "shown": shown,
        "group": group, "repeatable": repeatable})


@dataclass(frozen=True)
class ServeConfig:
    """The settings of one `rillet serve`, as the flags give them."""

    model: str | None = option(None, "a GGUF file or a Hugging Face llama model folder",
                               shown="the embedded SmolLM2-135M-Instruct Q4_1")
    served_model_name: str | None = option(None, "the model name clients ask for",
                                           shown=f"{DEFAULT_MODEL_NAME} for the embedded model, else the file name")
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port to listen on", type=int)
    # -- the engine (EngineConfig) --
    device: str = option("cpu", "torch device, e.g. cpu or cuda")
    kv_cache_tokens: int = option(16384, "KV cache capacity in tokens, shared by all sequences",
                                  type=positive_int, shown="{default}; the default model needs 23 KiB a token in float16")
    kv_cache_dtype: str = option("float16", "element type of the KV cache: float16 halves its memory; attention "
                                 "still computes in float32", choices=("float16", "float32"))
    max_num_seqs: int = option(64, "sequences decoded at once", type=positive_int)
    max_num_batched_tokens: int = option(256, "tokens computed per step: the prefill chunk size", type=positive_int)
    block_size: int = option(16, "tokens per KV block", type=positive_int)
    weights: str = option(
        # bench/quality.py: the fastest format within 1e-6 KL of float32.
        "quantized-int8x2", "how the linear layers hold their weights: quantized (the GGUF file's Q4_0, Q4_1, "
        "Q8_0, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K blocks as stored, multiplied by a native CPU kernel at the file's "
        "exact values; other matrices in float16, named in the log), quantized-int8x2 (the same blocks, "
        "activations rounded twice to int8, about 16 bits: integer products, within 1e-4 of exact), "
        "quantized-int8 (activations rounded once to int8 per block of 32 as llama.cpp does: fastest, not "
        "exact), float16 (rounded, FBGEMM), or float32 (exact dequantized file)")
    enable_prefix_caching: bool = option(True, "turn prefix caching off", flag="--no-prefix-caching", shown="")
    # None: one per core (EngineConfig.resolved_num_threads).
    num_threads: int | None = option(None, "compute threads of the model step", flag="--threads",
                                     type=positive_int, metavar="N", shown="one per core")
    # -- the server --
    http_nice: int = option(10, "how much CPU priority (nice) the HTTP server process gives up to the engine "
                            "process, so that HTTP work does not stall the model step's threads on a machine with "
                            "few cores; 0 keeps them equal", type=int, metavar="N")
    api_key: tuple[str, ...] = option((), "require this API key on /v1/* (repeatable; also RILLET_API_KEYS, "
                                      "comma-separated)", metavar="KEY", repeatable=True, shown="")
    api_keys_file: str | None = option(None, "a TOML file of [[keys]] with key (or key_sha256), optional id and "
                                       "models", metavar="PATH", shown="")
    public_metrics: bool = option(False, "serve /metrics without a key on a server with keys",
                                  shown="a key is needed")
    public_openapi: bool = option(False, "serve /openapi.json without a key on a server with keys",
                                  shown="a key is needed")
    rate_limit_rpm: int | None = option(
        None, "requests per minute per key, a token bucket", type=positive_int, metavar="N", group="limits",
        shown="unlimited; a keys file's rpm overrides it per key; an open server shares one bucket")
    rate_limit_tpm: int | None = option(
        None, "tokens per minute per key: prompt plus max_tokens reserved up front, the unused part given back "
        "at the end", type=positive_int, metavar="N", group="limits",
        shown="unlimited; a keys file's tpm overrides it")
    max_queued_requests: int = option(256, "requests that may wait for their first token; more get a 503 "
                                      "overloaded", type=positive_int, metavar="N", group="limits")
    max_queued_tokens: int = option(65536, "prompt tokens that may wait for their first token; more get a 503 "
                                    "overloaded", type=positive_int, metavar="N", group="limits")
    queue_timeout: float = option(60.0, "a request the engine has not begun to run after this long is aborted "
                                  "with a 503 overloaded; computing its prompt does not count", type=float,
                                  metavar="SECONDS", group="limits")
    max_request_bytes: int = option(4 * 1024 * 1024, "largest request body; a larger one is a 413, refused "
                                    "before it is read", type=positive_int, metavar="N", group="limits",
                                    shown="{default}, 4 MiB")
    max_seqs_per_request: int | None = option(
        None, "the largest n (choices) of one request; more is a 422", type=positive_int, metavar="N",
        group="limits", shown="a quarter of --max-num-seqs, so that one request leaves room for others")
    max_seqs_per_key: int | None = option(
        None, "sequences one API key may have in flight; its further requests wait in the queue",
        type=positive_int, metavar="N", group="limits",
        shown="half of --max-num-seqs; an open server has no keys, and no such share")
    header_timeout: float = option(10.0, "a request's head must arrive within this long of its connection (or "
                                   "of the answer before it), or the connection is closed", type=positive_float,
                                   metavar="SECONDS", group="limits")
    body_timeout: float = option(30.0, "a request's body must arrive within this long of its head, or it is a "
                                 "408", type=positive_float, metavar="SECONDS", group="limits")
    max_connections: int = option(1024, "connections held at once; one more is answered with a 503 at once",
                                  type=positive_int, metavar="N", group="limits",
                                  shown="{default}, or fewer where the open-file limit, raised to its hard limit at "
                                  "start, is lower")
    engine_restarts: int = option(3, "how often a dead engine process is replaced within "
                                  "--engine-restart-window; one more death there exits the server with status 1",
                                  type=int, metavar="N")
    engine_restart_window: float = option(60.0, "the window of --engine-restarts", type=float, metavar="SECONDS")
    shutdown_grace: float = option(30.0, "on SIGTERM or SIGINT, stop accepting connections and give in-flight "
                                   "requests this long to finish before cancelling them; then exit 0", type=float,
                                   metavar="SECONDS")
    log_level: str = option("info", "how much to log; warning also silences the access log",
                            choices=("debug", "info", "warning", "error"))
    playground: bool = option(True, "do not serve the chat playground page at /", flag="--no-playground",
                              group="browsers", shown="served")
    cors_origin: tuple[str, ...] = option((), "let web pages of this origin (such as https://app.example.com) "
                                          "call the API from a browser; repeatable, * for any", metavar="ORIGIN",
                                          group="browsers", repeatable=True, shown="none")
    allowed_host: tuple[str, ...] = option(
        (), "a host name the server answers to besides localhost and IP addresses; a server on a loopback address "
        "(or any server given one) answers any other Host with a 403, against DNS rebinding; repeatable, * for "
        "any", metavar="NAME", group="browsers", repeatable=True, shown="none")
    replicas: int | None = option(None, "serve through Ray Serve with N engine replicas, each its own model and "
                                  "KV cache, routed by prompt prefix", type=positive_int, metavar="N",
                                  group="cluster", shown="one engine, no Ray")
    ray_address: str | None = option(None, "with --replicas: join this Ray cluster (such as 10.0.0.5:6379, or "
                                     "auto) instead of starting a local one", metavar="ADDRESS", group="cluster",
                                     shown="")
    cpus_per_replica: float | None = option(None, "with --replicas: Ray CPUs each replica takes; with --device "
                                            "cuda each replica takes one GPU", type=float, metavar="N",
                                            group="cluster", shown="--threads, or one per core")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeConfig:
        """The settings of parsed flags (add_arguments made the parser)."""
        return cls(**{f.name: tuple(getattr(args, f.name)) if f.metadata["repeatable"] else getattr(args, f.name)
                      for f in fields(cls)})

    def engine_config(self):
        from rillet.engine.config import EngineConfig

        return EngineConfig(device=self.device, kv_cache_dtype=self.kv_cache_dtype, block_size=self.block_size,
                            kv_cache_tokens=self.kv_cache_tokens, max_num_seqs=self.max_num_seqs,
                            max_num_batched_tokens=self.max_num_batched_tokens,
                            enable_prefix_caching=self.enable_prefix_caching, num_threads=self.num_threads)

    def restart_policy(self):
        from rillet.engine.engine_process import RestartPolicy

        return RestartPolicy(max(0, self.engine_restarts), self.engine_restart_window)

    def admission_limits(self):
        """The admission bounds, with the sequence shares' defaults; raises ValueError for shares
        that could never let a request run."""
        from rillet.api import admission

        per_request, per_key = admission.default_sequence_shares(self.max_num_seqs)
        per_request = self.max_seqs_per_request or min(per_request, self.max_seqs_per_key or per_request)
        per_key = self.max_seqs_per_key or max(per_key, per_request)
        if per_request > self.max_num_seqs:
            raise ValueError(f"--max-seqs-per-request {per_request} is more than --max-num-seqs {self.max_num_seqs}")
        if per_key < per_request:
            raise ValueError(f"--max-seqs-per-key {per_key} is less than --max-seqs-per-request {per_request}: "
                             "a request of that many choices could never run")
        return admission.AdmissionLimits(self.max_queued_requests, self.max_queued_tokens, self.queue_timeout,
                                         per_request, per_key)


DEFAULTS = ServeConfig()


def flag_of(name: str) -> str:
    """The command-line flag of a field."""
    return next(f for f in fields(ServeConfig) if f.name == name).metadata["flag"] or f"--{name.replace('_', '-')}"


def add_arguments(parser: argparse.ArgumentParser, choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """One flag per field of ServeConfig; choices: lists known elsewhere (the weight formats)."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(ServeConfig):
        meta = f.metadata
        target = groups[meta["group"]] if meta["group"] else parser
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(f.default, meta)}
        if isinstance(f.default, bool):
            kwargs.update(action="store_false" if f.default else "store_true")
        else:
            kwargs.update(default=[] if meta["repeatable"] else f.default,
                          action="append" if meta["repeatable"] else "store")
            for key in ("type", "choices", "metavar"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
            if (choices or {}).get(f.name):
                kwargs["choices"] = choices[f.name]
        target.add_argument(flag_of(f.name), **kwargs)


def _help(default: Any, meta) -> str:
    value = f"{default:g}" if isinstance(default, float) else str(default)
    shown = value if meta["shown"] is None else meta["shown"].format(default=value)
    return f"{meta['help']} (default: {shown})" if shown else meta["help"]
