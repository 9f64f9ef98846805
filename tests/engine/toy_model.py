"""A model small enough to check by hand that the engine's paged KV bookkeeping is right.

Its KV cache stores each token id; the next token is the sum of every token id in the
sequence's context, read back through the block table, modulo the vocabulary. Any slot,
block table, prefix-cache or copy-on-write mistake changes the sum, and so the output.
"""
from __future__ import annotations

import torch

from rillet.model.attention_metadata import AttentionMetadata

VOCAB = 50


def expected_continuation(prompt: list[int], num_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(num_tokens):
        tokens.append(sum(tokens) % VOCAB)
    return tokens[len(prompt):]


class ToyModel(torch.nn.Module):
    def allocate_kv_cache(self, num_blocks: int, block_size: int, dtype: torch.dtype) -> list[torch.Tensor]:
        return [torch.full((2, num_blocks, block_size, 1, 1), float("nan"), dtype=torch.float64)]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        cache = kv_caches[0].view(2, -1)
        cache[0, meta.slot_mapping] = input_ids.to(torch.float64)
        hidden = torch.empty(len(input_ids), 1, dtype=torch.float64)
        for i in range(meta.num_seqs):
            start, end = meta.query_start[i], meta.query_start[i + 1]
            context_len = meta.context_lens[i]
            slots = [int(meta.block_tables[i, p // meta.block_size]) * meta.block_size + p % meta.block_size
                     for p in range(context_len)]
            values = cache[0, torch.tensor(slots)]
            for j in range(end - start):
                visible = context_len - (end - start) + j + 1
                hidden[start + j, 0] = values[:visible].sum()
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(hidden.shape[0], VOCAB)
        logits[torch.arange(hidden.shape[0]), (hidden[:, 0].long() % VOCAB)] = 10.0
        return logits
