"""The contract between the engine's ModelRunner and the model's attention: where each new
token's key and value go in the paged KV cache and which cached tokens each sequence attends to."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class AttentionMetadata:
    # The batch is flat: T new tokens from S sequences; sequence i owns tokens
    # query_start[i]:query_start[i + 1] of input_ids/positions (len S + 1, python ints).
    query_start: list[int]
    # Tokens in sequence i's KV after this step: those cached before plus its new ones (len S).
    context_lens: list[int]
    # [S, max_blocks_per_seq] int64: the KV block ids of each sequence in order, padded with 0.
    block_tables: torch.Tensor
    # [T] int64: flat slot (block_id * block_size + offset) where each new token's K/V is written.
    slot_mapping: torch.Tensor
    block_size: int
    # The sequences with one new token, built by the first layer and kept for the rest.
    decodes: DecodeBatch | None = None
    # Every new token as a query of its own, likewise built once a step.
    queries: QueryRows | None = None
    # A KV cache of several groups (rillet/engine/kv_layout.py): each layer's group, and each
    # group's metadata (its own block tables and slots; this one is the first). None: one group.
    layer_groups: list[int] | None = None
    groups: list[AttentionMetadata] | None = None

    def for_layer(self, layer: int) -> AttentionMetadata:
        return self if self.layer_groups is None else self.groups[self.layer_groups[layer]]

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    def num_new(self, i: int) -> int:
        return self.query_start[i + 1] - self.query_start[i]

    def query_rows(self) -> QueryRows:
        if self.queries is None:
            if len(self.slot_mapping) == self.num_seqs:  # one new token each: the step's own tables
                lens = torch.tensor(self.context_lens, dtype=torch.long, device=self.block_tables.device)
                self.queries = QueryRows(self.block_tables, lens)
            else:
                counts = [self.num_new(i) for i in range(self.num_seqs)]
                lens = [n for i, count in enumerate(counts)
                        for n in range(self.context_lens[i] - count + 1, self.context_lens[i] + 1)]
                device = self.block_tables.device
                tables = self.block_tables.repeat_interleave(torch.tensor(counts, device=device), dim=0)
                self.queries = QueryRows(tables, torch.tensor(lens, dtype=torch.long, device=device))
        return self.queries

    def decode_batch(self) -> DecodeBatch:
        if self.decodes is None:
            seqs = [i for i in range(self.num_seqs) if self.num_new(i) == 1]
            device = self.block_tables.device
            index = torch.tensor(seqs, dtype=torch.long, device=device)
            all_decode = len(seqs) == self.num_seqs
            self.decodes = DecodeBatch(
                seqs=seqs,
                rows=None if all_decode else torch.tensor([self.query_start[i] for i in seqs], dtype=torch.long,
                                                          device=device),
                block_tables=self.block_tables if all_decode else self.block_tables.index_select(0, index),
                context_lens=torch.tensor([self.context_lens[i] for i in seqs], dtype=torch.long, device=device),
            )
        return self.decodes


@dataclass(slots=True)
class DecodeBatch:
    """Sequences whose single new token attends to all their cached tokens, batched together."""

    seqs: list[int]
    # [D] int64: each one's row in the flat batch; None when every sequence decodes (row i is sequence i).
    rows: torch.Tensor | None
    block_tables: torch.Tensor  # [D, max_blocks_per_seq] int64
    context_lens: torch.Tensor  # [D] int64
    # Sliding window (None: full) -> [D, 1, 1, max_context] bool: which padded key slots each sees
    # (built by the PyTorch path, once per step and window).
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)


@dataclass(slots=True)
class QueryRows:
    """Each new token of the step as one query row that sees its sequence's cached tokens up to
    and including itself: row j of a sequence whose n new tokens end at context length L sees
    L - n + 1 + j tokens."""

    block_tables: torch.Tensor  # [T, max_blocks_per_seq] int64: the row's sequence's table
    context_lens: torch.Tensor  # [T] int64
