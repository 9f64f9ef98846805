"""Attention over a paged KV cache for a flat batch of sequences."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rillet.model import gpu, native
from rillet.model.attention_metadata import AttentionMetadata, DecodeBatch


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """q: [T, heads, dim]; k, v: [T, kv_heads, dim]; cache: [2, blocks, block_size, kv_heads, dim],
    which already holds k and v in their slots (LayerOps.write_kv). scale: of the scores (default
    dim ** -0.5); window: a sliding window, the most recent tokens a query sees (itself included).

    Lets each new token attend to its sequence's cached tokens up to and including itself.
    Where the C kernel runs, every token is a query row of its own, computed the same way whether
    it comes in a prefill chunk or alone (after a prefix-cache hit, or as a decode): a token's
    result never depends on how its prompt was split into steps. A cache on a CUDA device (with
    triton installed) takes the same rows through the Triton kernel (rillet/model/gpu), which
    reads the block tables in place. Elsewhere sequences with one new token (decodes) are computed
    together in one call and each longer prefill chunk on its own, with PyTorch's attention.
    Returns [T, heads * dim].
    """
    rows = meta.query_rows()
    if gpu.applies(cache):
        out = gpu.paged_attention(q, cache, rows.block_tables, rows.context_lens, scale, window)
        return out.reshape(q.shape[0], -1)
    out = native.paged_decode_attention(q, cache, rows.block_tables, rows.context_lens, scale, window)
    if out is not None:
        return out.to(q.dtype).reshape(q.shape[0], -1)
    decodes = meta.decode_batch()
    if decodes.rows is None:
        return _decode_attention(q, cache, decodes, scale, window).reshape(q.shape[0], -1)
    out = torch.empty_like(q)
    if decodes.seqs:
        out.index_copy_(0, decodes.rows,
                        _decode_attention(q.index_select(0, decodes.rows), cache, decodes, scale, window))
    for i in range(meta.num_seqs):
        if meta.num_new(i) > 1:
            out[meta.query_start[i]:meta.query_start[i + 1]] = _sequence_attention(q, k, v, cache, meta, i, scale,
                                                                                   window)
    return out.reshape(q.shape[0], -1)


def _gather(cache: torch.Tensor, block_table: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the blocks in block_table ([..., blocks]) as [..., kv_heads, tokens, dim],
    converted to dtype."""
    # One index_select over whole blocks copies keys and values together, about twice as fast
    # as advanced indexing of each.
    blocks = cache.view(2, cache.shape[1], -1).index_select(1, block_table.reshape(-1)).to(dtype)
    keys, values = blocks.view(2, *block_table.shape[:-1], -1, *cache.shape[-2:]).transpose(-3, -2)
    return keys, values


def _decode_attention(q: torch.Tensor, cache: torch.Tensor, decodes: DecodeBatch, scale: float | None = None,
                      window: int | None = None) -> torch.Tensor:
    """q: [D, heads, dim], one token per sequence: the blocks gathered and padded for PyTorch's
    attention."""
    keys, values = _gather(cache, decodes.block_tables, q.dtype)  # [D, kv_heads, L, dim]
    mask = decodes.masks.get(window)
    if mask is None:  # the same for every layer of a window: built by the first, kept for the rest
        lens = decodes.context_lens.unsqueeze(1)
        key_positions = torch.arange(keys.shape[2], device=q.device).unsqueeze(0)
        visible = key_positions < lens
        if window is not None:
            visible &= key_positions >= lens - window
        mask = decodes.masks[window] = visible[:, None, None, :]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask, enable_gqa=True, scale=scale)
    return out.squeeze(2)  # [D, heads, dim]


def _sequence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor,
                        meta: AttentionMetadata, i: int, scale: float | None = None,
                        window: int | None = None) -> torch.Tensor:
    start, end = meta.query_start[i], meta.query_start[i + 1]
    num_new, context_len = end - start, meta.context_lens[i]
    # Batched 4-d shapes: PyTorch's CPU flash kernel takes only those (3-d falls back to plain
    # matmuls, about twice as slow).
    query = q[start:end].transpose(0, 1).unsqueeze(0)  # [1, heads, new, dim]
    if num_new == context_len and window is None:
        # Nothing cached before: this step's keys and values, rounded as the cache stores them.
        keys, values = (x[start:end].to(cache.dtype).to(q.dtype).transpose(0, 1).unsqueeze(0) for x in (k, v))
        out = F.scaled_dot_product_attention(query, keys, values, is_causal=True, enable_gqa=True, scale=scale)
    else:
        num_blocks = -(-context_len // meta.block_size)
        keys, values = _gather(cache, meta.block_tables[i:i + 1, :num_blocks], q.dtype)
        keys, values = keys[..., :context_len, :], values[..., :context_len, :]
        # New token j sits at position context_len - num_new + j and sees every key up to it (and,
        # with a window, none before its last `window`).
        positions = torch.arange(context_len - num_new, context_len, device=q.device).unsqueeze(1)
        key_positions = torch.arange(context_len, device=q.device).unsqueeze(0)
        visible = key_positions <= positions
        if window is not None:
            visible &= key_positions > positions - window
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible[None, None], enable_gqa=True,
                                             scale=scale)
    return out[0].transpose(0, 1)  # [new, heads, dim]
