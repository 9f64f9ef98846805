"""The API's latency histograms (observed once per streamed token) are exposed exactly as
prometheus_client's own Histogram exposes the same observations."""
from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from rillet.api.metrics import LatencyHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def test_exposition_is_prometheus_clients_histograms():
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("rillet_test_seconds", "A latency", buckets=BUCKETS, registry=theirs)
    histogram = LatencyHistogram("rillet_test_seconds", "A latency", BUCKETS, ours)
    histogram._created = reference._created
    assert generate_latest(ours) == generate_latest(theirs)
    rng = random.Random(0)
    for value in [rng.expovariate(10) for _ in range(1000)] + [*BUCKETS, 0.0, 1e6]:
        reference.observe(value)
        histogram.observe(value)
    assert generate_latest(ours) == generate_latest(theirs)
    assert openmetrics.generate_latest(ours) == openmetrics.generate_latest(theirs)
