"""Ray Serve's request-router interface, deciding by prompt prefix and load (prefix_index.py).

Ray Serve builds this router inside the process that holds the deployment handle (the ingress)
and calls choose_replicas for each request it routes; this class ranks the replicas (the chosen
one first, then the rest by load) and Ray sends the request to the first of a rank that accepts
it. Load is the requests in flight to each replica from this router, counted on
on_request_routed and on_request_completed: exact, since there is one ingress.

The ingress's EngineClient (client.py) reads the router through router_registry: which replica
served a request, what each replica reported of its engine (record_routing_stats), the requests
routed.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from rillet.cluster import router_registry
from rillet.cluster.prefix_index import (
    DEFAULT_IMBALANCE_THRESHOLD,
    DEFAULT_MIN_MATCH_SHARE,
    Candidate,
    PrefixIndex,
    decide,
)

# The replica method that runs a request; other calls (describe) are routed by load alone.
GENERATE_METHOD = "generate"
CHOICE_TTL_S = 10.0


@dataclass(slots=True)
class ReplicaView:
    """One replica, as the router sees it."""
    replica: str  # Ray Serve's id of the replica, unique for its life
    node_id: str
    requests_routed: int
    requests_routed_by_prefix: int
    requests_in_flight: int
    engine: dict = field(default_factory=dict)  # its EngineStats, as record_routing_stats gave it


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, block_size: int = 16, kv_cache_blocks: int = 1024,
                         min_match_share: float = DEFAULT_MIN_MATCH_SHARE,
                         imbalance_threshold: int = DEFAULT_IMBALANCE_THRESHOLD) -> None:
        self.index = PrefixIndex(block_size, kv_cache_blocks)
        self.min_match_share = min_match_share
        self.imbalance_threshold = imbalance_threshold
        self._lock = threading.Lock()
        self._in_flight: dict[ReplicaID, set[str]] = defaultdict(set)
        self._routed: dict[ReplicaID, int] = defaultdict(int)
        self._routed_by_prefix: dict[ReplicaID, int] = defaultdict(int)
        # Chosen but not yet accepted (Ray asks the replica first): internal id -> (replica, chosen
        # for its prefix, when). Counted in the replica's load, so that a burst of requests spreads.
        self._chosen: dict[str, tuple[ReplicaID, bool, float]] = {}
        self._replica_of_request: dict[str, ReplicaID] = {}  # rillet request id -> replica, until it ends
        router_registry.ROUTERS[self._deployment_id.name] = self

    # -- Ray Serve's calls ---------------------------------------------------------------

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        prompt = _prompt_of(pending_request)
        hashes = self.index.hashes(prompt) if prompt is not None else []
        candidates = []
        for replica in candidate_replicas:
            matched, cached = self.index.matches(replica.replica_id, hashes)
            candidates.append(Candidate(replica.replica_id, self._load(replica.replica_id), matched, cached))
        decision = decide(candidates, len(prompt or ()), self.index.block_size, self.min_match_share,
                          self.imbalance_threshold)
        if pending_request is not None:
            with self._lock:
                self._chosen[pending_request.metadata.internal_request_id] = (
                    decision.replica, decision.by_prefix, time.monotonic())
            if prompt is not None:
                self.index.insert(decision.replica, hashes)
        chosen = [r for r in candidate_replicas if r.replica_id == decision.replica]
        rest = sorted((r for r in candidate_replicas if r.replica_id != decision.replica),
                      key=lambda r: self._load(r.replica_id))
        return [chosen, rest] if rest else [chosen]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        internal_id = pending_request.metadata.internal_request_id
        with self._lock:
            chosen, by_prefix, _ = self._chosen.pop(internal_id, (None, False, 0.0))
            by_prefix = by_prefix and chosen == replica_id
            if pending_request.metadata.call_method != GENERATE_METHOD:
                return  # describe() and kin: not load, and never left counted as in flight
            self._in_flight[replica_id].add(internal_id)
            self._routed[replica_id] += 1
            self._routed_by_prefix[replica_id] += by_prefix
            self._replica_of_request[pending_request.args[0]] = replica_id
        if chosen != replica_id:  # taken by another than the one chosen (it was full)
            self.index.insert(replica_id, self.index.hashes(pending_request.args[1]))

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        with self._lock:
            self._in_flight[replica_id].discard(internal_request_id)
            self._chosen.pop(internal_request_id, None)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.index.keep_only({r.replica_id for r in replicas})

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.index.forget(replica_id)
        with self._lock:
            self._in_flight.pop(replica_id, None)

    # -- the ingress's calls (client.py), from its own thread --------------------------------

    def request_finished(self, request_id: str, token_ids: list[int] | None) -> str | None:
        """A request has ended; token_ids (its prompt and answer), when given, are now in its
        replica's prefix cache. Returns the replica that served it."""
        with self._lock:
            replica_id = self._replica_of_request.pop(request_id, None)
        if replica_id is None:
            return None
        if token_ids:
            self.index.insert(replica_id, self.index.hashes(token_ids))
        return replica_id.unique_id

    def replicas(self) -> list[ReplicaView]:
        """The live replicas."""
        with self._lock:
            return [ReplicaView(replica.replica_id.unique_id, replica.node_id, self._routed[replica.replica_id],
                                self._routed_by_prefix[replica.replica_id],
                                len(self._in_flight.get(replica.replica_id, ())), dict(replica.routing_stats or {}))
                    for replica in self.curr_replicas.values()]

    def _load(self, replica_id: ReplicaID) -> int:
        """Requests in flight to the replica, and those chosen for it in the last moments that it
        has not accepted yet (a choice never followed up is forgotten after CHOICE_TTL_S)."""
        now = time.monotonic()
        with self._lock:
            for internal_id in [i for i, (_, _, at) in self._chosen.items() if now - at > CHOICE_TTL_S]:
                del self._chosen[internal_id]
            pending = sum(1 for replica, _, _ in self._chosen.values() if replica == replica_id)
            return len(self._in_flight.get(replica_id, ())) + pending


def _prompt_of(pending_request: PendingRequest | None) -> list[int] | None:
    """The prompt token ids of a generate call: generate(request_id, prompt_token_ids, params)."""
    if pending_request is None or pending_request.metadata.call_method != GENERATE_METHOD:
        return None
    args = pending_request.args
    return args[1] if len(args) > 1 and isinstance(args[1], list) else None
