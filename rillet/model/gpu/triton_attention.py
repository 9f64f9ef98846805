"""Paged attention in Triton that reads each query row's block table in place: no gathered copy
of the KV per layer. The contract is the C kernel's (rillet/model/native paged_decode_attention):
every new token is a query row of its own, with its own block table and context length (its
position + 1), so prefill chunks and decodes go through one launch.

One program per (query row, KV head): it loads the row's query heads of that KV head (grouped-query
attention reads each key and value once for the whole group), walks the row's visible tokens a
tile at a time, looking each token's block up in the table, and keeps an online softmax in
float32. Any head_dim and block_size work (head_dim is padded to a power of two and masked).

Runs compiled on a CUDA device, and on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1
in the environment before triton is imported), which is how the tests check it without a GPU.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The most elements of one tile's [group, tokens, dim] product a program holds at once.
_TILE_ELEMENTS = 16384


@triton.jit
def _paged_attention_kernel(q_ptr, cache_ptr, tables_ptr, lens_ptr, out_ptr,
                            stride_q_row, stride_q_head, stride_out_row, stride_out_head,
                            stride_cache_kv, stride_cache_block, stride_cache_slot, stride_cache_head,
                            stride_table_row, scale_log2, window, block_size, head_dim,
                            GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM_PAD: tl.constexpr,
                            TILE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    groups = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM_PAD)
    group_mask = groups < GROUP
    dim_mask = dims < head_dim
    heads = kv_head * GROUP + groups

    q = tl.load(q_ptr + row * stride_q_row + heads[:, None] * stride_q_head + dims[None, :],
                mask=group_mask[:, None] & dim_mask[None, :], other=0.0).to(tl.float32)
    context_len = tl.load(lens_ptr + row)
    # The row sees positions [max(context_len - window, 0), context_len): every tile below holds
    # at least one of them, so each tile's maximum score is finite.
    first = tl.maximum(context_len - window, 0)
    table = tables_ptr + row * stride_table_row
    head_offset = kv_head * stride_cache_head

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    for start in range(first, context_len, TILE):
        positions = start + tl.arange(0, TILE)
        visible = positions < context_len
        blocks = tl.load(table + positions // block_size, mask=visible, other=0)
        slots = blocks * stride_cache_block + (positions % block_size) * stride_cache_slot + head_offset
        kv_mask = visible[:, None] & dim_mask[None, :]
        keys = tl.load(cache_ptr + slots[:, None] + dims[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * keys[None, :, :], axis=2) * scale_log2  # [GROUP_PAD, TILE]
        scores = tl.where(visible[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        values = tl.load(cache_ptr + stride_cache_kv + slots[:, None] + dims[None, :], mask=kv_mask,
                         other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * values[None, :, :], axis=1)
        m = m_new

    out = acc / l[:, None]
    tl.store(out_ptr + row * stride_out_row + heads[:, None] * stride_out_head + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=group_mask[:, None] & dim_mask[None, :])


def paged_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                    scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """q: [R, heads, dim], one query row each; cache: [2, blocks, block_size, kv_heads, dim]
    (float16, bfloat16 or float32, its last dimension contiguous); block_tables: [R, width] int64,
    the row's sequence's blocks in order (padding never read); context_lens: [R] int64, the tokens
    row r sees (its position + 1), at least 1; scale: of the scores (default dim ** -0.5); window:
    each row sees only its last `window` tokens, itself included. heads must be a multiple of
    kv_heads. Returns [R, heads, dim] in q's dtype (computed in float32)."""
    num_rows, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_dim = cache.shape
    if cache_dim != head_dim or num_heads % num_kv_heads:
        raise ValueError(f"q [.., {num_heads}, {head_dim}] does not fit a cache of {num_kv_heads} KV heads "
                         f"of {cache_dim}")
    if cache.dtype not in _CACHE_DTYPES or cache.stride(-1) != 1:
        raise ValueError(f"the Triton attention kernel takes a {', '.join(map(str, _CACHE_DTYPES))} cache "
                         f"with a contiguous last dimension, not {cache.dtype} with strides {cache.stride()}")
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    q = q.contiguous()
    block_tables = block_tables.to(device=q.device, dtype=torch.long).contiguous()
    context_lens = context_lens.to(device=q.device, dtype=torch.long).contiguous()
    out = torch.empty_like(q)
    if num_rows == 0:
        return out
    group = num_heads // num_kv_heads
    group_pad, dim_pad = triton.next_power_of_2(group), triton.next_power_of_2(head_dim)
    tile = max(16, min(128, triton.next_power_of_2(max(_TILE_ELEMENTS // (group_pad * dim_pad), 1))))
    scale = head_dim ** -0.5 if scale is None else scale
    _paged_attention_kernel[(num_rows, num_kv_heads)](
        q, cache, block_tables, context_lens, out,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3),
        block_tables.stride(0), scale * math.log2(math.e), window or 1 << 30, block_size, head_dim,
        GROUP=group, GROUP_PAD=group_pad, DIM_PAD=dim_pad, TILE=tile)
    return out
