"""Paged KV memory: a pool of fixed-size blocks with refcounts and a prefix cache.

Every full block is found by a key chained on the key of the block before it: a keyed BLAKE2b
digest of (parent key, token ids), its key drawn at random per process, so nobody can craft a
prompt whose key lands on another's block. A hit is then checked, not trusted: the cached block
must hold the same token ids and must have been computed after the very block the sequence holds
before it (each block's contents get a fresh `content_id` whenever it is reallocated), so a hit
means the same whole prefix even if two keys collided. A block whose refcount drops to zero keeps
its contents and stays findable until the pool needs it for something else; free blocks are
reused least recently freed first.
"""
from __future__ import annotations

import array
import hashlib
import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass

from rillet.engine.sequence import Sequence

_HASH_KEY = os.urandom(32)
# The parent of a sequence's first block.
NO_PARENT = -1


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    # Identifies what the block holds; a new one each time the block is allocated anew.
    content_id: int = 0
    # Set while the block is in the prefix cache: its key, its tokens, and the content_id of the
    # block computed before it in the sequence that filled it.
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None
    parent_content_id: int = NO_PARENT


def hash_block(parent_hash: bytes | None, token_ids: tuple[int, ...]) -> bytes:
    digest = hashlib.blake2b(parent_hash or b"", digest_size=16, key=_HASH_KEY)
    digest.update(array.array("q", token_ids).tobytes())
    return digest.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}
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
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        parent_hash: bytes | None = None
        parent_content_id = NO_PARENT
        for index in range(self._num_lookup_blocks(seq)):
            tokens = self._block_tokens(seq, index)
            block_hash = hash_block(parent_hash, tokens)
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            block = self._blocks[block_id]
            if block.token_ids != tokens or block.parent_content_id != parent_content_id:
                break  # the key collided: another prefix's block
            self._take(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(block_hash)
            parent_hash, parent_content_id = block_hash, block.content_id
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        return seq.num_computed_tokens

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
            block = self._blocks[seq.block_table[index]]
            # If one step computed the same prefix twice, the first copy is the cached one.
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash, block.token_ids = block_hash, tokens
                block.parent_content_id = self._blocks[seq.block_table[index - 1]].content_id if index else NO_PARENT
                self._cached[block_hash] = block.block_id

    # -- allocation -----------------------------------------------------------------

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Makes room for num_new_tokens more K/V entries of seq, or changes nothing and returns False."""
        needed_total = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        new_blocks = max(0, needed_total - len(seq.block_table))
        copy_on_write = self._needs_copy_on_write(seq)
        if new_blocks + int(copy_on_write) > len(self._free):
            return False
        if copy_on_write:
            shared = seq.block_table[-1]
            private = self._allocate_block()
            self.pending_copies.append((shared, private))
            self._release(shared)
            seq.block_table[-1] = private
        for _ in range(new_blocks):
            seq.block_table.append(self._allocate_block())
        return True

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Lets child share every block of parent; writes into a shared block copy it first."""
        for block_id in parent.block_table:
            self._blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens
        child.block_hashes = list(parent.block_hashes)

    def free(self, seq: Sequence) -> None:
        # Tail blocks first, so they are reused before the prefix blocks more likely to be hit again.
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.block_hashes = []

    # -- internals ------------------------------------------------------------------

    def _num_lookup_blocks(self, seq: Sequence) -> int:
        return (seq.num_tokens - 1) // self.block_size

    def _block_tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        start = index * self.block_size
        return tuple(seq.token_ids[start:start + self.block_size])

    def _needs_copy_on_write(self, seq: Sequence) -> bool:
        """The next token goes into the last block, which another sequence also uses."""
        index = seq.num_computed_tokens // self.block_size
        if seq.num_computed_tokens % self.block_size == 0 or index >= len(seq.block_table):
            return False
        return index == len(seq.block_table) - 1 and self._blocks[seq.block_table[index]].ref_count > 1

    def _allocate_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash, block.token_ids, block.parent_content_id = None, None, NO_PARENT
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
