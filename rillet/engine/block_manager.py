"""Paged KV memory: a pool of fixed-size blocks with refcounts and a prefix cache.

Every full block is found by a key chained on the key of the block before it: a keyed BLAKE2b
digest of (parent key, token ids), its key drawn at random per process, so nobody can craft a
prompt whose key lands on another's block. A hit is then checked, not trusted: the cached block
must hold the same token ids and must have been computed after the very block the sequence holds
before it (each block's contents get a fresh `content_id` whenever it is reallocated), so a hit
means the same whole prefix even if two keys collided. A block whose refcount drops to zero keeps
its contents and stays findable until the pool needs it for something else; free blocks are
reused least recently freed first.

A model with sliding-window layers has several KV groups (rillet/engine/kv_layout.py), each with
its own block table per sequence, all drawn from this one pool. A windowed group's blocks go back
to the pool once no query still to come can see them. The prefix cache then keeps each group's
blocks under the same keys; a hit of h blocks needs the first group's whole chain and, in every
other group, the blocks the next token's window reaches, each tied to the first group's block at
its place (`anchor`: that block's content_id when it was computed).
"""
from __future__ import annotations

import array
import hashlib
import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass

from rillet.engine.kv_layout import KVLayout
from rillet.engine.sequence import DEAD_BLOCK, Sequence

_HASH_KEY = os.urandom(32)
# The parent of a sequence's first block.
NO_PARENT = -1


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    # Identifies what the block holds; a new one each time the block is allocated anew.
    content_id: int = 0
    # Set while the block is in the prefix cache: its group, its key, its tokens, and the content_id
    # of the block computed before it in the sequence that filled it (in the first group), or of
    # the first group's block at its place (in the others).
    group: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None
    parent_content_id: int = NO_PARENT
    # The key of the block before it: what a windowed first group checks where that block is gone.
    parent_hash: bytes | None = None


def hash_block(parent_hash: bytes | None, token_ids: tuple[int, ...]) -> bytes:
    digest = hashlib.blake2b(parent_hash or b"", digest_size=16, key=_HASH_KEY)
    digest.update(array.array("q", token_ids).tobytes())
    return digest.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 layout: KVLayout | None = None) -> None:
        """num_blocks: the pool's blocks (pages, with several KV groups)."""
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.layout = layout or KVLayout.single(1)
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: list[dict[bytes, int]] = [{} for _ in range(self.layout.num_groups)]
        self._content_ids = itertools.count(1)
        # (source, destination) block copies the model runner must do before the next forward.
        self.pending_copies: list[tuple[int, int]] = []
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------------

    def claim_cached_prefix(self, seq: Sequence) -> int:
        """Gives a sequence with no blocks yet every cached full block of its prefix.

        Returns the number of tokens found. At least one token is left to compute, since
        the next token is sampled from the logits of the last one.
        """
        self.prepare(seq)
        if not self.enable_prefix_caching or any(seq.block_tables):
            return 0
        hashes, parent_hash = [], None
        for index in range(self._num_lookup_blocks(seq)):
            parent_hash = hash_block(parent_hash, self._block_tokens(seq, index))
            hashes.append(parent_hash)
        first = self._first_group_hits(seq, hashes)
        others = [self._group_hits(seq, group, hashes, first) for group in range(1, self.layout.num_groups)]
        num_hit = len(first)
        while num_hit and not all(self._covers(group, hits, num_hit)
                                  for group, hits in enumerate([first, *others])):
            num_hit -= 1
        if num_hit == 0:
            return 0
        for group, hits in enumerate([first, *others]):
            start = self._first_needed(group, num_hit)
            table = [DEAD_BLOCK] * start
            for block_id in hits[start:num_hit]:
                self._take(block_id)
                table.append(block_id)
            seq.block_tables[group] = table
        seq.block_hashes = hashes[:num_hit]
        seq.num_computed_tokens = num_hit * self.block_size
        return seq.num_computed_tokens

    def _first_group_hits(self, seq: Sequence, hashes: list[bytes]) -> list[int | None]:
        """The first group's cached blocks of the prefix, in order, None where missing. A full
        group's chain stops at its first miss; a windowed one's keeps going (its early blocks go)."""
        hits: list[int | None] = []
        parent_content_id = NO_PARENT
        windowed = self.layout.group_windows[0] is not None
        for index, block_hash in enumerate(hashes):
            block = self._cached_block(0, block_hash, self._block_tokens(seq, index))
            parent_ok = block is not None and (
                block.parent_content_id == parent_content_id if parent_content_id != NO_PARENT or index == 0
                else block.parent_hash == (hashes[index - 1] if index else None))
            if not parent_ok:
                if not windowed:
                    break
                hits.append(None)
                parent_content_id = NO_PARENT
                continue
            hits.append(block.block_id)
            parent_content_id = block.content_id
        return hits

    def _group_hits(self, seq: Sequence, group: int, hashes: list[bytes], first: list[int | None]) -> list[int | None]:
        """Another group's cached blocks, each tied to the first group's block at its place."""
        hits: list[int | None] = []
        for index, anchor in enumerate(first):
            block = self._cached_block(group, hashes[index], self._block_tokens(seq, index))
            ok = block is not None and (anchor is None or block.parent_content_id == self._blocks[anchor].content_id)
            hits.append(block.block_id if ok else None)
        return hits

    def _covers(self, group: int, hits: list[int | None], num_hit: int) -> bool:
        """The group holds every block that the token after num_hit blocks reads."""
        return all(block_id is not None for block_id in hits[self._first_needed(group, num_hit):num_hit])

    def _first_needed(self, group: int, num_blocks: int) -> int:
        return self.layout.first_needed_block(group, num_blocks * self.block_size, self.block_size)

    def _cached_block(self, group: int, block_hash: bytes, tokens: tuple[int, ...]) -> Block | None:
        block_id = self._cached[group].get(block_hash)
        if block_id is None:
            return None
        block = self._blocks[block_id]
        return block if block.token_ids == tokens else None  # else the key collided: another prefix's block

    def record_prefix_lookup(self, seq: Sequence, num_hit_tokens: int) -> None:
        """Counts a sequence's lookup (claim_cached_prefix found num_hit_tokens) in the hit-rate
        figures once, when it is admitted: a sequence may try, and wait, for many steps."""
        if self.enable_prefix_caching and not seq.prefix_lookup_recorded:
            self.prefix_cache_queries += self._num_lookup_blocks(seq)
            self.prefix_cache_hits += num_hit_tokens // self.block_size
            seq.prefix_lookup_recorded = True

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publishes the sequence's newly computed full blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for index in range(len(seq.block_hashes), num_full):
            parent_hash = seq.block_hashes[-1] if seq.block_hashes else None
            tokens = self._block_tokens(seq, index)
            block_hash = hash_block(parent_hash, tokens)
            seq.block_hashes.append(block_hash)
            first = seq.block_tables[0]
            for group, table in enumerate(seq.block_tables):
                if table[index] == DEAD_BLOCK:
                    continue
                block = self._blocks[table[index]]
                # If one step computed the same prefix twice, the first copy is the cached one.
                if block.block_hash is not None or block_hash in self._cached[group]:
                    continue
                if group == 0:
                    before = first[index - 1] if index else DEAD_BLOCK
                    tie = self._blocks[before].content_id if before != DEAD_BLOCK else NO_PARENT
                else:
                    tie = self._blocks[first[index]].content_id if first[index] != DEAD_BLOCK else NO_PARENT
                block.group, block.block_hash, block.token_ids = group, block_hash, tokens
                block.parent_content_id, block.parent_hash = tie, parent_hash
                self._cached[group][block_hash] = block.block_id

    # -- allocation -----------------------------------------------------------------

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Makes room for num_new_tokens more K/V entries of seq, or returns False having changed
        nothing but the release of windowed blocks no query will read again."""
        self.prepare(seq)
        self._release_behind_windows(seq)
        needed_total = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        new_blocks = sum(max(0, needed_total - len(table)) for table in seq.block_tables)
        copy_on_write = [group for group, table in enumerate(seq.block_tables) if self._needs_copy_on_write(seq, table)]
        if new_blocks + len(copy_on_write) > len(self._free):
            return False
        for group in copy_on_write:
            table = seq.block_tables[group]
            shared = table[-1]
            private = self._allocate_block()
            self.pending_copies.append((shared, private))
            self._release(shared)
            table[-1] = private
        for table in seq.block_tables:
            while len(table) < needed_total:
                table.append(self._allocate_block())
        return True

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Lets child share every block of parent; writes into a shared block copy it first."""
        for table in parent.block_tables:
            for block_id in table:
                if block_id != DEAD_BLOCK:
                    self._blocks[block_id].ref_count += 1
        child.block_tables = [list(table) for table in parent.block_tables]
        child.num_computed_tokens = parent.num_computed_tokens
        child.block_hashes = list(parent.block_hashes)

    def free(self, seq: Sequence) -> None:
        # Tail blocks first, so they are reused before the prefix blocks more likely to be hit again.
        for table in seq.block_tables:
            for block_id in reversed(table):
                if block_id != DEAD_BLOCK:
                    self._release(block_id)
        seq.block_tables = [[] for _ in range(self.layout.num_groups)]
        seq.num_computed_tokens = 0
        seq.block_hashes = []

    def prepare(self, seq: Sequence) -> None:
        """Gives a new sequence one (empty) block table per KV group."""
        if len(seq.block_tables) != self.layout.num_groups:
            seq.block_tables = [[] for _ in range(self.layout.num_groups)]

    # -- internals ------------------------------------------------------------------

    def _release_behind_windows(self, seq: Sequence) -> None:
        for group, table in enumerate(seq.block_tables):
            # Dead blocks are always a prefix of the table: walk back from the first one still
            # needed to the last one already released (a step or two's worth, not the whole table).
            index = min(len(table), self.layout.first_needed_block(group, seq.num_computed_tokens, self.block_size)) - 1
            while index >= 0 and table[index] != DEAD_BLOCK:
                self._release(table[index])
                table[index] = DEAD_BLOCK
                index -= 1

    def _num_lookup_blocks(self, seq: Sequence) -> int:
        return (seq.num_tokens - 1) // self.block_size

    def _block_tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        start = index * self.block_size
        return tuple(seq.token_ids[start:start + self.block_size])

    def _needs_copy_on_write(self, seq: Sequence, table: list[int]) -> bool:
        """The next token goes into the table's last block, which another sequence also uses."""
        index = seq.num_computed_tokens // self.block_size
        if seq.num_computed_tokens % self.block_size == 0 or index >= len(table):
            return False
        return index == len(table) - 1 and self._blocks[table[index]].ref_count > 1

    def _allocate_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.block_hash is not None:
            del self._cached[block.group][block.block_hash]
            block.block_hash, block.token_ids, block.parent_content_id, block.parent_hash = None, None, NO_PARENT, None
        block.ref_count = 1
        block.content_id = next(self._content_ids)
        return block_id

    def _take(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _release(self, block_id: int) -> None:
        block = self._blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self._free[block_id] = None
