"""Prometheus `/metrics`: the engine's counters and gauges, read at scrape time."""
from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rillet.engine.stats import EngineStats


class EngineCollector:
    def __init__(self, read_stats: Callable[[], EngineStats]) -> None:
        self._read_stats = read_stats

    def collect(self) -> Iterator[Metric]:
        s = self._read_stats()
        yield GaugeMetricFamily("rillet_running_sequences", "Sequences being computed", value=s.num_running_seqs)
        yield GaugeMetricFamily("rillet_waiting_sequences", "Sequences waiting to run", value=s.num_waiting_seqs)
        yield GaugeMetricFamily("rillet_kv_blocks_total", "KV cache blocks in the pool", value=s.num_kv_blocks)
        yield GaugeMetricFamily("rillet_kv_blocks_free", "KV cache blocks not held by any sequence",
                                value=s.num_free_kv_blocks)
        yield CounterMetricFamily("rillet_prompt_tokens_computed", "Prompt tokens computed by the model "
                                  "(prefix-cache hits excluded)", value=s.num_computed_prompt_tokens)
        yield CounterMetricFamily("rillet_generated_tokens", "Tokens generated", value=s.num_generated_tokens)
        yield CounterMetricFamily("rillet_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache",
                                  value=s.prefix_cache_queried_tokens)
        yield CounterMetricFamily("rillet_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache",
                                  value=s.prefix_cache_hit_tokens)
        yield CounterMetricFamily("rillet_preemptions", "Sequences preempted for lack of KV blocks",
                                  value=s.num_preemptions)


def metrics_router(read_stats: Callable[[], EngineStats]) -> APIRouter:
    registry = CollectorRegistry()
    registry.register(EngineCollector(read_stats))
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
