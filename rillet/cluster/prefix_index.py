"""Which replica most likely holds a prompt's prefix in its KV cache, and where a request goes.

The index keeps, per replica, the chained hashes of the full KV blocks of the token sequences sent
there (each prompt when it is routed, prompt plus answer when it ends), bounded by the replica's
KV capacity in blocks and forgotten least recently used first: a picture of what the replica's
own prefix cache (rillet/engine/block_manager.py) holds, built from what it was sent.

No Ray here: the decision is a plain function of the index and the replicas' loads.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# A match must cover at least this share of the prompt to pull a request to its replica: a shared
# system prompt alone (a small share of a conversation) does not, so new conversations spread.
DEFAULT_MIN_MATCH_SHARE = 0.5
# A replica is "clearly busier" with this many more requests in flight than the least loaded one.
DEFAULT_IMBALANCE_THRESHOLD = 4


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of token_ids: equal hashes mean equal prefixes."""
    hashes, parent = [], 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start:start + block_size])))
        hashes.append(parent)
    return hashes


class ReplicaBlocks:
    """The block hashes believed to be in one replica's cache, least recently used first."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matched_blocks(self, hashes: list[int]) -> int:
        count = 0
        for block_hash in hashes:
            if block_hash not in self._blocks:
                break
            count += 1
        return count

    def insert(self, hashes: list[int]) -> None:
        for block_hash in hashes:
            self._blocks[block_hash] = None
            self._blocks.move_to_end(block_hash)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)


@dataclass(slots=True, frozen=True)
class Candidate:
    replica: Hashable
    load: int  # requests in flight
    matched_blocks: int
    cached_blocks: int


@dataclass(slots=True, frozen=True)
class Decision:
    replica: Hashable
    by_prefix: bool  # False: the least loaded


def decide(candidates: list[Candidate], num_prompt_tokens: int, block_size: int,
           min_match_share: float = DEFAULT_MIN_MATCH_SHARE,
           imbalance_threshold: int = DEFAULT_IMBALANCE_THRESHOLD) -> Decision:
    """The replica holding the longest prefix of the prompt (of several, the least loaded), if
    that prefix is at least min_match_share of the prompt's tokens and the replica is not clearly
    busier (by imbalance_threshold requests in flight) than the least loaded; else the least
    loaded, and of those the one holding the fewest blocks (new conversations go where there is
    most room)."""
    least_loaded = min(candidates, key=lambda c: (c.load, c.cached_blocks))
    best = max(candidates, key=lambda c: (c.matched_blocks, -c.load))
    share = best.matched_blocks * block_size / num_prompt_tokens if num_prompt_tokens else 0.0
    if best.matched_blocks and share >= min_match_share and best.load - least_loaded.load < imbalance_threshold:
        return Decision(best.replica, by_prefix=True)
    return Decision(least_loaded.replica, by_prefix=False)


class PrefixIndex:
    """ReplicaBlocks for every live replica; safe to use from several threads (Ray Serve runs the
    router on its own event loop thread, the ingress's app on another)."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        self._replicas: dict[Hashable, ReplicaBlocks] = {}
        self._lock = threading.Lock()

    def set_capacity(self, capacity_blocks: int) -> None:
        """What a replica's cache keeps, once a replica has said (rillet.engine.kv_layout's
        cacheable_blocks: with windowed layers, more blocks than the KV cache's tokens)."""
        with self._lock:
            self.capacity_blocks = capacity_blocks
            for blocks in self._replicas.values():
                blocks.capacity_blocks = capacity_blocks

    def hashes(self, token_ids: Sequence[int]) -> list[int]:
        return block_hashes(token_ids, self.block_size)

    def keep_only(self, replicas: set) -> None:
        """Forgets replicas that are gone (a dead replica's cache died with it)."""
        with self._lock:
            for replica in list(self._replicas):
                if replica not in replicas:
                    del self._replicas[replica]

    def forget(self, replica: Hashable) -> None:
        with self._lock:
            self._replicas.pop(replica, None)

    def matches(self, replica: Hashable, hashes: list[int]) -> tuple[int, int]:
        """(blocks of hashes matched on replica, blocks the replica holds)."""
        with self._lock:
            blocks = self._replicas.get(replica)
            return (blocks.matched_blocks(hashes), len(blocks)) if blocks is not None else (0, 0)

    def insert(self, replica: Hashable, hashes: list[int]) -> None:
        with self._lock:
            self._replicas.setdefault(replica, ReplicaBlocks(self.capacity_blocks)).insert(hashes)
