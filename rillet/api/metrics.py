"""Prometheus `/metrics`: the engine's counters and gauges, read at scrape time, and the API's
own: requests by status, latency histograms, the admission queue."""
from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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
        hit_rate = s.prefix_cache_hit_tokens / s.prefix_cache_queried_tokens if s.prefix_cache_queried_tokens else 0.0
        yield GaugeMetricFamily("rillet_prefix_cache_hit_rate", "Share of prompt tokens found in the prefix cache, "
                                "since start", value=hit_rate)


class LatencyHistogram:
    """A histogram observed on the event loop (the inter-token latency: once per streamed token) with
    a bisect and two additions, where prometheus_client's Histogram takes a lock for its sum and
    another for the bucket, about a tenth of the API layer's CPU per token. Its exposition is that
    Histogram's: cumulative buckets, _count, _sum and _created. A scrape runs on another thread and
    may, as with that Histogram, count an observation whose sum it does not see yet."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = (*buckets, math.inf)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip(self._bounds, counts, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))
        family = HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=total)
        family.samples.append(Sample(f"{self.name}_created", {}, self._created))
        yield family


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ApiMetrics:
    """What the API layer measures itself; registered on the registry /metrics serves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("rillet_requests", "Requests to /v1 by HTTP status", ["status"], registry=registry)
        self.time_to_first_token = LatencyHistogram(
            "rillet_time_to_first_token_seconds", "From a chat completion's arrival to its first output",
            _LATENCY_BUCKETS, registry)
        self.inter_token_latency = LatencyHistogram(
            "rillet_inter_token_latency_seconds", "Between successive outputs of a chat completion",
            _LATENCY_BUCKETS, registry)
        self.request_latency = LatencyHistogram(
            "rillet_request_latency_seconds", "From a chat completion's arrival to its last byte",
            _LATENCY_BUCKETS, registry)
        self.queued_requests = Gauge("rillet_queued_requests", "Requests waiting for their first output",
                                     registry=registry)
        self.queued_prompt_tokens = Gauge("rillet_queued_prompt_tokens", "Prompt tokens of the waiting requests",
                                          registry=registry)


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
