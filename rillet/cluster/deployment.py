"""The Ray Serve application: one ingress running the same FastAPI app as a single server, in
front of N engine replicas routed by prefix (router.py).

There is one ingress replica, on purpose: API keys, the rate-limit buckets and the admission
queue are the app's in-memory state, and one ingress keeps them exact (several would each hold
a bucket of the whole minute). The ingress does no model compute (tokenizing, JSON and SSE), so
one goes a long way; its Ray Serve proxy runs beside it.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from ray import serve
from ray.serve.config import RequestRouterConfig

from rillet import launcher
from rillet.api.auth import KeyStore
from rillet.cluster.replica import EngineReplica, ReplicaSettings
from rillet.config import ServeConfig

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
    """The ingress builds the single server's app (rillet/launcher.py) from the same settings."""

    serve: ServeConfig
    keys: KeyStore
    model_path: str
    served_name: str
    router_kwargs: dict = field(default_factory=dict)


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


def _build_app(engine, ingress: IngressSettings, model: dict, front):
    from rillet.cluster.metrics import ReplicaCollector

    return launcher.build_app(engine, ingress.serve, ingress.keys, front, ingress.model_path, ingress.served_name,
                              model["max_model_len"], model["weight_format"], collectors=(ReplicaCollector(engine),))


def build_application(replica_settings: ReplicaSettings, ingress_settings: IngressSettings, num_replicas: int,
                      cpus_per_replica: float, gpus_per_replica: float):
    """The application: the ingress bound to the engine deployment's handle."""
    config = replica_settings.serve.engine_config()
    queued = ingress_settings.serve.max_queued_requests
    engine = serve.deployment(
        EngineReplica, name=ENGINE_DEPLOYMENT, num_replicas=num_replicas,
        # The ingress bounds what waits (admission); a replica takes all it is sent.
        max_ongoing_requests=config.max_num_seqs + queued,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=5,
        request_router_config=RequestRouterConfig(
            request_router_class="rillet.cluster.router.PrefixAffinityRouter",
            # The cache's capacity comes from the replicas (ClusterEngineClient.describe).
            request_router_kwargs={"block_size": config.block_size, **ingress_settings.router_kwargs},
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S),
    )
    ingress = serve.deployment(
        Ingress, name=INGRESS_DEPLOYMENT, num_replicas=1, max_ongoing_requests=config.max_num_seqs + queued + 1024,
        ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=5)
    return ingress.bind(engine.bind(replica_settings), ingress_settings)
