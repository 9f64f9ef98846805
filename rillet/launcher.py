"""What a single `rillet serve` and the cluster's ingress build alike from one ServeConfig: the
model's path and served name, the system fingerprint, the paths served without a key, the
ServedModel, and the app itself (rillet.api.app.create_app) around an EngineClient: an
EngineProcess in a single server (rillet/cli.py), the ClusterEngineClient in the cluster's ingress
(rillet/cluster/deployment.py).

The API and the model are imported where they are used: rillet/cli.py imports this module before
it knows whether it serves at all.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rillet.config import DEFAULT_MODEL_NAME, ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rillet.api.auth import KeyStore
    from rillet.engine.config import EngineConfig
    from rillet.engine.engine_client import EngineClient
    from rillet.engine.engine_process import EngineProcess
    from rillet.model.loader import LoadedTokenizer


def model_path(settings: ServeConfig) -> str:
    """--model, or the embedded default model."""
    from rillet.model import default_model_path

    return settings.model or default_model_path()


def served_name(settings: ServeConfig, path: str) -> str:
    """The name clients ask for: --served-model-name, else the default model's name or the file's."""
    if settings.served_model_name:
        return settings.served_model_name
    if not settings.model:
        return DEFAULT_MODEL_NAME
    name = Path(path).name
    return name[:-5] if name.endswith(".gguf") else name


def engine_process(settings: ServeConfig, path: str, log_format: str) -> EngineProcess:
    """The engine in its own process (not launched yet), restarted as the settings allow."""
    from rillet.engine.engine_process import EngineProcess, ModelEngineSpec

    return EngineProcess(ModelEngineSpec(path, settings.weights, settings.engine_config()),
                         settings.log_level.upper(), log_format, settings.restart_policy())


def fingerprint(path: str, weight_format: str, config: EngineConfig) -> str:
    """The system_fingerprint: the model file, its weight format and the engine settings that can
    change outputs or speed."""
    from rillet.model.loader import file_fingerprint

    described = f"{file_fingerprint(path)} weights={weight_format} {config.describe()}"
    return "fp_" + hashlib.sha256(described.encode()).hexdigest()[:12]


def public_paths(settings: ServeConfig) -> frozenset[str]:
    """The paths a server with keys serves without one."""
    return frozenset(path for path, public in (("/metrics", settings.public_metrics),
                                               ("/openapi.json", settings.public_openapi)) if public)


def build_app(engine: EngineClient, settings: ServeConfig, keys: KeyStore, front: LoadedTokenizer, path: str,
              name: str, max_model_len: int, weight_format: str, collectors: tuple = ()) -> FastAPI:
    """The FastAPI app of a server of settings, whose engine (ready) reported max_model_len and
    weight_format; collectors: more /metrics (the cluster's replicas)."""
    from rillet.api.app import create_app
    from rillet.api.rate_limit import RateLimiter
    from rillet.api.request_head import HostCheck
    from rillet.api.served_model import ServedModel

    config = settings.engine_config()
    served = ServedModel(name=name, tokenizer=front.tokenizer, chat_template=front.chat_template,
                         max_context_len=max_model_len, max_num_seqs=config.max_num_seqs,
                         fingerprint=fingerprint(path, weight_format, config), created=int(time.time()),
                         architecture=front.config.architecture)
    return create_app(engine, served, keys, RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm),
                      settings.admission_limits(), max_request_bytes=settings.max_request_bytes,
                      public_paths=public_paths(settings), playground=settings.playground,
                      cors_origins=settings.cors_origin, collectors=collectors,
                      host_check=HostCheck.for_server(settings.host, settings.allowed_host),
                      body_timeout=settings.body_timeout)
