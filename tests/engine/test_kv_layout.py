"""KV groups for sliding-window layers (rillet/engine/kv_layout.py) and the block manager's
bookkeeping of them: windowed blocks go back to the pool, prefix hits need the window's blocks."""
from __future__ import annotations

import pytest

from rillet.engine import block_manager
from rillet.engine.block_manager import BlockManager
from rillet.engine.kv_layout import KVLayout
from rillet.engine.sequence import DEAD_BLOCK

from .helpers import make_seq

GEMMA3_270M = tuple(None if (i + 1) % 6 == 0 else 512 for i in range(18))


def test_gemma3_layers_split_into_groups_of_three():
    layout = KVLayout.of(GEMMA3_270M, 18, 32768)
    assert layout.group_size == 3
    assert layout.group_windows == (None, 512, 512, 512, 512, 512)
    assert [layout.layer_groups[i] for i in (5, 11, 17)] == [0, 0, 0]
    assert layout.layer_groups[:5] == (1, 1, 1, 2, 2)
    # Each tensor slot of each group is used by exactly one layer.
    assert len({(g, s) for g, s in zip(layout.layer_groups, layout.layer_slots)}) == 18
    assert layout.num_pages(1024) == 6144  # the memory of 1024 blocks of all 18 layers


def test_models_without_windows_or_with_windows_beyond_the_context_have_one_group():
    assert KVLayout.of((), 4, 2048) == KVLayout.single(4)
    assert KVLayout.of((4096,) * 4, 4, 2048) == KVLayout.single(4)
    mistral = KVLayout.of((4096,) * 4, 4, 32768)
    assert mistral.group_windows == (4096,) and mistral.group_size == 4


def test_a_lone_sequence_fits_the_pool():
    layout = KVLayout.of((None, 8, 8, 8), 4, 1024)  # one full group, three windowed groups of one layer
    # 100 pages; each windowed group holds at most ceil((8 - 1 + 4) / 4) + 1 = 4 blocks.
    assert layout.max_sequence_tokens(100, 4, 1024, 4) == (100 - 3 * 4) * 4
    assert layout.max_sequence_tokens(100, 4, 200, 4) == 200


def hybrid(num_blocks: int = 64, window: int = 8) -> BlockManager:
    """Block size 4; group 0 full, group 1 a window of 8 tokens."""
    return BlockManager(num_blocks, 4, layout=KVLayout.of((None, window), 2, 1024))


def compute(bm: BlockManager, seq, num_tokens: int) -> None:
    assert bm.allocate_slots(seq, num_tokens)
    seq.num_computed_tokens += num_tokens
    bm.register_full_blocks(seq)


def test_windowed_blocks_behind_every_query_go_back_to_the_pool():
    bm = hybrid()
    seq = make_seq(list(range(1, 41)))
    compute(bm, seq, 40)
    assert len(seq.block_tables[0]) == len(seq.block_tables[1]) == 10
    for _ in range(24):  # decode 24 tokens, one at a time
        seq.token_ids.append(7)
        compute(bm, seq, 1)
    full, windowed = seq.block_tables
    assert DEAD_BLOCK not in full and len(full) == 16
    # The next query (position 64) sees positions 57-64: blocks 14-16; 0-13 are released.
    assert bm.allocate_slots(seq, 1)
    live = [b for b in seq.block_tables[1] if b != DEAD_BLOCK]
    assert seq.block_tables[1][:14] == [DEAD_BLOCK] * 14 and len(live) == 3
    assert bm.num_free_blocks == 64 - 17 - 3
    bm.free(seq)
    assert bm.num_free_blocks == 64


def test_a_follow_up_turn_hits_the_full_chain_and_the_window_it_needs():
    bm = hybrid()
    first = make_seq(list(range(1, 41)))
    compute(bm, first, 40)
    seq_tokens = list(first.token_ids)
    bm.free(first)
    follow = make_seq(seq_tokens + [99, 98, 97, 96, 95])
    assert bm.claim_cached_prefix(follow) == 40
    # The token at 40 sees 33-40: the window group holds blocks 8-9 only.
    assert follow.block_tables[1][:8] == [DEAD_BLOCK] * 8 and DEAD_BLOCK not in follow.block_tables[1][8:]
    assert len(follow.block_tables[0]) == 10 and DEAD_BLOCK not in follow.block_tables[0]


def test_a_hit_stops_where_the_window_group_lost_a_block_it_needs():
    bm = hybrid(num_blocks=24)
    first = make_seq(list(range(1, 41)))
    compute(bm, first, 40)
    bm.free(first)
    # The window group's copy of the last block (tokens 37-40) is the next the pool hands out.
    lost = next(block_id for block_id in bm._free
                if bm._blocks[block_id].group == 1 and bm._blocks[block_id].token_ids == tuple(range(37, 41)))
    bm._free.move_to_end(lost, last=False)
    compute(bm, make_seq([500] * 4), 4)
    follow = make_seq(list(range(1, 41)) + [99])
    # Without block 9, the token at 36 (which sees 29-36: blocks 7 and 8) is the furthest a hit reaches.
    assert bm.claim_cached_prefix(follow) == 36
    assert follow.block_tables[1][:7] == [DEAD_BLOCK] * 7 and DEAD_BLOCK not in follow.block_tables[1][7:]


def test_forged_keys_never_give_a_window_block_of_another_prefix(monkeypatch):
    monkeypatch.setattr(block_manager, "hash_block", lambda parent, tokens: b"same")
    bm = hybrid()
    a = make_seq(list(range(1, 41)))
    compute(bm, a, 40)
    bm.free(a)
    b = make_seq(list(range(1, 41)) + [5])
    # Every key is the same: only the first block can match (tokens and no parent).
    hit = bm.claim_cached_prefix(b)
    assert hit <= 4


def test_forked_choices_share_and_release_window_blocks():
    bm = hybrid()
    parent = make_seq(list(range(1, 21)))
    compute(bm, parent, 20)
    child = make_seq(list(range(1, 21)))
    bm.fork(parent, child)
    for seq in (parent, child):
        for _ in range(12):
            seq.token_ids.append(3)
            compute(bm, seq, 1)
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 64


@pytest.mark.parametrize("window", [4, 5, 8])
def test_no_live_block_is_ever_one_a_query_still_reads(window):
    bm = hybrid(window=window)
    seq = make_seq(list(range(1, 11)))
    compute(bm, seq, 10)
    for step in range(30):
        seq.token_ids.append(step + 1)
        assert bm.allocate_slots(seq, 1)
        position = seq.num_computed_tokens
        first_visible = max(0, position - window + 1)
        for index, block_id in enumerate(seq.block_tables[1]):
            if (index + 1) * 4 > first_visible:  # the block holds a visible token
                assert block_id != DEAD_BLOCK, (step, index)
        seq.num_computed_tokens += 1
        bm.register_full_blocks(seq)


def test_the_cache_keeps_a_block_per_page_of_its_full_groups():
    assert KVLayout.single(30).cacheable_blocks(KVLayout.single(30).num_pages(1024)) == 1024
    gemma = KVLayout.of((512, 512, 512, 512, 512, None) * 3, 18, 32768)  # Gemma 3 270M: one full group of six
    assert gemma.num_groups == 6 and gemma.cacheable_blocks(gemma.num_pages(1024)) == 6 * 1024
    windowed = KVLayout.of((4096, 4096, 1024, 1024), 4, 32768)  # no full group: a page in each group
    assert windowed.cacheable_blocks(windowed.num_pages(1024)) == 1024
