from __future__ import annotations

from rillet.engine import block_manager
from rillet.engine.block_manager import BlockManager, hash_block

from .helpers import make_seq


def compute(bm: BlockManager, seq, num_tokens: int) -> None:
    """What the engine does around a forward: allocate, compute, publish full blocks."""
    assert bm.allocate_slots(seq, num_tokens)
    seq.num_computed_tokens += num_tokens
    bm.register_full_blocks(seq)


def test_allocation_and_free_return_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(1, 11)))
    assert bm.allocate_slots(seq, 10)
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 5
    bm.free(seq)
    assert seq.block_table == []
    assert bm.num_free_blocks == 8


def test_allocation_fails_without_side_effects_when_pool_is_short():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(list(range(1, 13)))
    assert not bm.allocate_slots(seq, 12)
    assert seq.block_table == []
    assert bm.num_free_blocks == 2


def test_decode_allocates_a_block_only_at_block_boundaries():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq([1, 2, 3])
    compute(bm, seq, 3)
    assert len(seq.block_table) == 1
    seq.token_ids.append(4)
    compute(bm, seq, 1)
    assert len(seq.block_table) == 1
    seq.token_ids.append(5)
    compute(bm, seq, 1)
    assert len(seq.block_table) == 2


def test_prefix_hit_reuses_full_blocks_and_leaves_last_token_to_compute():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = make_seq(list(range(1, 13)))  # 3 full blocks
    compute(bm, first, 12)
    second = make_seq(list(range(1, 13)))
    # All 12 tokens are cached, but the last one must be computed for its logits.
    assert bm.claim_cached_prefix(second) == 8
    assert second.block_table == first.block_table[:2]
    third = make_seq(list(range(1, 9)) + [99, 98, 97, 96, 95])
    assert bm.claim_cached_prefix(third) == 8
    different = make_seq([7] + list(range(2, 13)))
    assert bm.claim_cached_prefix(different) == 0


def test_cached_blocks_survive_free_until_reused():
    bm = BlockManager(num_blocks=4, block_size=4)
    first = make_seq(list(range(1, 10)))
    compute(bm, first, 9)
    bm.free(first)
    assert bm.num_free_blocks == 4
    again = make_seq(list(range(1, 10)))
    assert bm.claim_cached_prefix(again) == 8
    assert bm.num_free_blocks == 2
    bm.free(again)
    # Filling the whole pool with other tokens evicts the cached prefix.
    other = make_seq(list(range(50, 66)))
    compute(bm, other, 16)
    bm.free(other)
    late = make_seq(list(range(1, 10)))
    assert bm.claim_cached_prefix(late) == 0


def test_refcounts_of_shared_prefix_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    first = make_seq(list(range(1, 10)))
    compute(bm, first, 9)
    second = make_seq(list(range(1, 10)))
    bm.claim_cached_prefix(second)
    compute(bm, second, 1)
    assert bm.num_free_blocks == 8 - 3 - 1
    bm.free(first)
    # The two shared blocks are still held by second.
    assert bm.num_free_blocks == 8 - 2 - 1
    bm.free(second)
    assert bm.num_free_blocks == 8


def test_fork_shares_blocks_and_copies_the_partial_block_on_write():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = make_seq([1, 2, 3, 4, 5, 6])
    compute(bm, parent, 6)
    child = make_seq([1, 2, 3, 4, 5, 6])
    bm.fork(parent, child)
    assert child.block_table == parent.block_table
    assert bm.num_free_blocks == 6
    parent.token_ids.append(7)
    child.token_ids.append(8)
    assert bm.allocate_slots(parent, 1)
    assert bm.allocate_slots(child, 1)
    # The full first block stays shared; each now owns a private copy of the partial one.
    assert parent.block_table[0] == child.block_table[0]
    assert parent.block_table[1] != child.block_table[1]
    assert len(bm.pending_copies) == 1
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 8


def test_keys_are_keyed_digests_of_the_parent_key_and_the_tokens():
    first = hash_block(None, (1, 2, 3, 4))
    assert isinstance(first, bytes) and len(first) == 16
    assert hash_block(None, (1, 2, 3, 4)) == first
    assert hash_block(first, (1, 2, 3, 4)) != first != hash_block(None, (1, 2, 3, 5))
    # Python's hash() of small ints is the int itself: (-2, ...) and (-1, ...) would be keyed alike by it.
    assert hash_block(None, (-1,)) != hash_block(None, (-2,))


def test_a_colliding_key_is_turned_down_by_the_tokens_of_the_block(monkeypatch):
    monkeypatch.setattr(block_manager, "hash_block", lambda parent, tokens: b"collision")
    bm = BlockManager(num_blocks=16, block_size=4)
    compute(bm, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9]), 9)
    other = make_seq([9, 9, 9, 9, 5, 6, 7, 8, 9])
    assert bm.claim_cached_prefix(other) == 0 and other.block_table == []
    same = make_seq([1, 2, 3, 4, 50, 60, 70, 80, 90])
    assert bm.claim_cached_prefix(same) == 4


def test_a_colliding_key_is_turned_down_by_the_block_computed_before_it(monkeypatch):
    """A key that ignored the parent would find [5, 6, 7, 8], computed after [1, 2, 3, 4], as the
    first block of a prompt that starts with [5, 6, 7, 8]: its keys and values are not that block's."""
    monkeypatch.setattr(block_manager, "hash_block", lambda parent, tokens: bytes(tokens))
    bm = BlockManager(num_blocks=16, block_size=4)
    compute(bm, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9]), 9)
    assert bm.claim_cached_prefix(make_seq([5, 6, 7, 8, 9, 10])) == 0
    assert bm.claim_cached_prefix(make_seq([1, 2, 3, 4, 5, 6, 7, 8, 0])) == 8

