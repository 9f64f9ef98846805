"""/metrics of a cluster: per replica, the requests routed to it and its engine's figures, read
at scrape time from the router (client.py). The engine's own metrics (rillet_running_sequences
and the rest) are the sums over the replicas."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rillet.cluster.client import ClusterEngineClient

_LABELS = ["replica", "node"]


class ReplicaCollector:
    def __init__(self, client: ClusterEngineClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        views = self._client.replicas()
        yield GaugeMetricFamily("rillet_replicas", "Engine replicas the router can send requests to",
                                value=len(views))
        routed = CounterMetricFamily("rillet_replica_requests_routed", "Requests the router sent to the replica",
                                     labels=_LABELS)
        by_prefix = CounterMetricFamily("rillet_replica_requests_routed_by_prefix", "Requests sent to the replica "
                                        "because it held their prompt's prefix", labels=_LABELS)
        in_flight = GaugeMetricFamily("rillet_replica_requests_in_flight", "Requests the replica is serving",
                                      labels=_LABELS)
        running = GaugeMetricFamily("rillet_replica_running_sequences", "Sequences the replica's engine is "
                                    "computing", labels=_LABELS)
        waiting = GaugeMetricFamily("rillet_replica_waiting_sequences", "Sequences waiting in the replica's engine",
                                    labels=_LABELS)
        hit_rate = GaugeMetricFamily("rillet_replica_prefix_cache_hit_rate", "Share of the replica's prompt tokens "
                                     "found in its prefix cache, since it started", labels=_LABELS)
        hit_tokens = CounterMetricFamily("rillet_replica_prefix_cache_hit_tokens", "Prompt tokens found in the "
                                         "replica's prefix cache", labels=_LABELS)
        queried_tokens = CounterMetricFamily("rillet_replica_prefix_cache_queried_tokens", "Prompt tokens looked up "
                                             "in the replica's prefix cache", labels=_LABELS)
        for view in views:
            labels = [view.replica, view.node_id]
            stats = view.engine
            routed.add_metric(labels, view.requests_routed)
            by_prefix.add_metric(labels, view.requests_routed_by_prefix)
            in_flight.add_metric(labels, view.requests_in_flight)
            running.add_metric(labels, stats.get("num_running_seqs", 0))
            waiting.add_metric(labels, stats.get("num_waiting_seqs", 0))
            queried = stats.get("prefix_cache_queried_tokens", 0)
            hits = stats.get("prefix_cache_hit_tokens", 0)
            hit_rate.add_metric(labels, hits / queried if queried else 0.0)
            hit_tokens.add_metric(labels, hits)
            queried_tokens.add_metric(labels, queried)
        yield from (routed, by_prefix, in_flight, running, waiting, hit_rate, hit_tokens, queried_tokens)
