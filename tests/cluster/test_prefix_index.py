"""The router's decision, without Ray: in the default suite (rillet/cluster/prefix_index.py)."""
from __future__ import annotations

from rillet.cluster.prefix_index import Candidate, PrefixIndex, ReplicaBlocks, block_hashes, decide


def test_block_hashes_chain_so_equal_hashes_mean_equal_prefixes():
    a = block_hashes(list(range(40)), 16)
    b = block_hashes(list(range(32)) + [99] * 8, 16)
    c = block_hashes([7] + list(range(1, 40)), 16)
    assert len(a) == 2 and a == b  # the partial third block is not a block
    assert c[0] != a[0] and c[1] != a[1]  # a later block differs when an earlier one does


def test_matched_blocks_is_the_leading_run_and_the_oldest_are_forgotten_first():
    blocks = ReplicaBlocks(capacity_blocks=3)
    blocks.insert([1, 2, 3])
    assert blocks.matched_blocks([1, 2, 9, 3]) == 2
    blocks.insert([4])  # 1 is the least recently used
    assert blocks.matched_blocks([1, 2]) == 0 and blocks.matched_blocks([2, 3, 4]) == 3


def test_a_long_match_wins_unless_its_replica_is_clearly_busier():
    held = [Candidate("a", load=2, matched_blocks=8, cached_blocks=50), Candidate("b", load=0, matched_blocks=0,
                                                                                cached_blocks=10)]
    assert decide(held, num_prompt_tokens=160, block_size=16, imbalance_threshold=4).replica == "a"
    busy = [Candidate("a", load=5, matched_blocks=8, cached_blocks=50), Candidate("b", load=0, matched_blocks=0,
                                                                                cached_blocks=10)]
    decision = decide(busy, num_prompt_tokens=160, block_size=16, imbalance_threshold=4)
    assert decision.replica == "b" and not decision.by_prefix


def test_a_short_shared_prefix_does_not_pull_and_new_work_goes_where_there_is_room():
    # Only a shared system prompt matches (16 of 40 tokens): the least loaded, then the emptier, wins.
    candidates = [Candidate("a", load=0, matched_blocks=1, cached_blocks=50),
                  Candidate("b", load=0, matched_blocks=0, cached_blocks=10)]
    assert decide(candidates, num_prompt_tokens=40, block_size=16).replica == "b"
    # Equal matches are no reason to prefer either.
    even = [Candidate("a", load=1, matched_blocks=9, cached_blocks=50),
            Candidate("b", load=0, matched_blocks=9, cached_blocks=60)]
    assert decide(even, num_prompt_tokens=160, block_size=16).replica == "b"


def test_index_forgets_replicas_that_are_gone():
    index = PrefixIndex(block_size=4, capacity_blocks=100)
    hashes = index.hashes(list(range(16)))
    index.insert("a", hashes)
    assert index.matches("a", hashes) == (4, 4)
    index.keep_only({"b"})
    assert index.matches("a", hashes) == (0, 0)
