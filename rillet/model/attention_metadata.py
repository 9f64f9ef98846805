"""The contract between the engine's ModelRunner and the model's attention: where each new
token's key and value go in the paged KV cache and which cached tokens each sequence attends to."""
from __future__ import annotations

from dataclasses import dataclass

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
    # [S, 1, 1, max_context] bool: which padded key slots each sequence sees in a decode-only step.
    decode_mask: torch.Tensor | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @property
    def is_decode_only(self) -> bool:
        return len(self.query_start) - 1 == self.query_start[-1]
