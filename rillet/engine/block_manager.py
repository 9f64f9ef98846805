"""Paged KV memory: a pool of fixed-size blocks with refcounts and a prefix cache.

Every full block is identified by a hash chained on the hash of the block before it, so
equal hashes mean equal token prefixes. A block whose refcount drops to zero keeps its
contents and stays findable by hash until the pool needs it for something else; free
blocks are reused least recently freed first.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from rillet.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent_hash, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}
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
        max_blocks = (seq.num_tokens - 1) // self.block_size
        self.prefix_cache_queries += max_blocks
        parent_hash: int | None = None
        for index in range(max_blocks):
            block_hash = hash_block(parent_hash, self._block_tokens(seq, index))
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            self._take(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(block_hash)
            parent_hash = block_hash
        self.prefix_cache_hits += len(seq.block_table)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        return seq.num_computed_tokens

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publishes the sequence's newly computed full blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for index in range(len(seq.block_hashes), num_full):
            parent_hash = seq.block_hashes[-1] if seq.block_hashes else None
            block_hash = hash_block(parent_hash, self._block_tokens(seq, index))
            seq.block_hashes.append(block_hash)
            block = self._blocks[seq.block_table[index]]
            # If one step computed the same prefix twice, the first copy is the cached one.
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash = block_hash
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
            block.block_hash = None
        block.ref_count = 1
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
