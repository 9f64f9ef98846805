"""The Ray Serve application: one ingress running the same FastAPI app as a single server, in
front of N engine replicas routed by prefix (router.py).

There is one ingress replica, on purpose: API keys, the rate-limit buckets and the admission
queue are the app's in-memory state, and one ingress keeps them exact (several would each hold
a bucket of the whole minute). The ingress does no model compute (tokenizing, JSON and SSE), so
one goes a long way; its Ray Serve proxy runs beside it.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field

from ray import serve
from ray.serve.config import RequestRouterConfig

from rillet.api.admission import AdmissionLimits
from rillet.api.auth import KeyStore
from rillet.api.body_limit import DEFAULT_BODY_TIMEOUT
from rillet.api.request_head import HostCheck
from rillet.cluster.replica import EngineReplica, ReplicaSettings

APP_NAME = "rillet"
ENGINE_DEPLOYMENT = "rillet-engine"
INGRESS_DEPLOYMENT = "rillet-ingress"
# How often each replica reports its engine's figures to the router and /metrics.
ROUTING_STATS_PERIOD_S = 0.25
# Ray Serve checks each replica this often, and replaces one that fails or does not answer.
HEALTH_CHECK_PERIOD_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 10.0


@dataclass(slots=True, frozen=True)
class IngressSettings:
    served_name: str
    model_path: str
    keys: KeyStore
    rate_limit_rpm: int | None
    rate_limit_tpm: int | None
    admission_limits: AdmissionLimits
    max_request_bytes: int
    public_paths: frozenset[str]
    playground: bool
    cors_origins: tuple[str, ...]
    max_num_seqs: int
    config_description: str
    router_kwargs: dict = field(default_factory=dict)
    # The Host names answered (rillet/api/request_head.py); None: any.
    host_check: HostCheck | None = None
    body_timeout: float = DEFAULT_BODY_TIMEOUT


@serve.ingress()
class Ingress:
    async def __init__(self, engine_handle, settings: IngressSettings) -> None:
        from rillet.api.access_log import configure_access_log
        from rillet.cluster.client import ClusterEngineClient

        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        configure_access_log("INFO")
        self.settings = settings
        self.engine = ClusterEngineClient(engine_handle)
        model, front = await asyncio.gather(self.engine.describe(), asyncio.to_thread(_load_front, settings.model_path))
        self.asgi_app = _build_app(self.engine, settings, model, front)

    def __serve_build_asgi_app__(self):
        return self.asgi_app


def _load_front(path: str):
    from rillet.model.loader import load_tokenizer_and_template

    return load_tokenizer_and_template(path)


def _build_app(engine, settings: IngressSettings, model: dict, front):
    from rillet.api.app import create_app
    from rillet.api.rate_limit import RateLimiter
    from rillet.api.served_model import ServedModel
    from rillet.cluster.metrics import ReplicaCollector
    from rillet.model.loader import file_fingerprint

    fingerprint = "fp_" + hashlib.sha256(
        f"{file_fingerprint(settings.model_path)} weights={model['weight_format']} "
        f"{settings.config_description}".encode()).hexdigest()[:12]
    served = ServedModel(name=settings.served_name, tokenizer=front.tokenizer, chat_template=front.chat_template,
                         max_context_len=model["max_model_len"], max_num_seqs=settings.max_num_seqs,
                         fingerprint=fingerprint, created=int(time.time()), architecture=front.config.architecture)
    return create_app(engine, served, settings.keys, RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm),
                      settings.admission_limits, max_request_bytes=settings.max_request_bytes,
                      public_paths=settings.public_paths, playground=settings.playground,
                      cors_origins=settings.cors_origins, collectors=(ReplicaCollector(engine),),
                      host_check=settings.host_check, body_timeout=settings.body_timeout)


def build_application(replica_settings: ReplicaSettings, ingress_settings: IngressSettings, num_replicas: int,
                      cpus_per_replica: float, gpus_per_replica: float):
    """The application: the ingress bound to the engine deployment's handle."""
    config = replica_settings.config
    queued = ingress_settings.admission_limits.max_queued_requests
    engine = serve.deployment(
        EngineReplica, name=ENGINE_DEPLOYMENT, num_replicas=num_replicas,
        # The ingress bounds what waits (admission); a replica takes all it is sent.
        max_ongoing_requests=config.max_num_seqs + queued,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=5,
        request_router_config=RequestRouterConfig(
            request_router_class="rillet.cluster.router.PrefixAffinityRouter",
            request_router_kwargs={"block_size": config.block_size, "kv_cache_blocks": config.num_blocks,
                                   **ingress_settings.router_kwargs},
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S),
    )
    ingress = serve.deployment(
        Ingress, name=INGRESS_DEPLOYMENT, num_replicas=1, max_ongoing_requests=config.max_num_seqs + queued + 1024,
        ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=5)
    return ingress.bind(engine.bind(replica_settings), ingress_settings)
