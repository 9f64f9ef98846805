"""The C decode-attention kernel against PyTorch's attention over the same paged cache."""
from __future__ import annotations

import pytest
import torch

from rillet.model import attention, native
from rillet.model.attention_metadata import AttentionMetadata

pytestmark = pytest.mark.skipif(native.library("decode_attention") is None, reason="no C compiler here")


def decode_step(num_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    context_lens = torch.randint(1, 5 * block_size, (num_seqs,), generator=generator)
    width = int(-(-context_lens.max() // block_size))
    num_blocks = num_seqs * width + 1
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    # Blocks shuffled across sequences, tables padded with block 0 like the engine's.
    order = (torch.randperm(num_blocks - 1, generator=generator) + 1).view(num_seqs, width)
    tables = torch.stack([torch.where(torch.arange(width) < -(-n // block_size), row, 0)
                          for row, n in zip(order, context_lens.tolist())])
    q = torch.randn(num_seqs, num_heads, head_dim, generator=generator)
    meta = AttentionMetadata(list(range(num_seqs + 1)), context_lens.tolist(), tables,
                             torch.zeros(num_seqs, dtype=torch.long), block_size)
    return q, cache, meta


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_seqs, num_heads, num_kv_heads, head_dim, block_size",
                         [(1, 9, 3, 64, 16), (7, 4, 4, 32, 8), (33, 8, 1, 128, 16), (5, 6, 2, 64, 32), (3, 2, 1, 20, 4),
                          (6, 4, 4, 64, 16)])  # the last: float16 rows read in place on AVX-512
def test_kernel_matches_pytorch_attention(monkeypatch, kv_dtype, num_seqs, num_heads, num_kv_heads, head_dim,
                                          block_size):
    q, cache, meta = decode_step(num_seqs, num_heads, num_kv_heads, head_dim, block_size, seed=num_seqs)
    cache = cache.to(kv_dtype)
    decodes = meta.decode_batch()
    got = native.paged_decode_attention(q, cache, decodes.block_tables, decodes.context_lens)
    monkeypatch.setattr(native, "paged_decode_attention", lambda *args: None)
    expected = attention._decode_attention(q, cache, decodes)
    assert got is not None and got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5


def test_kernel_declines_what_it_cannot_do():
    q, cache, meta = decode_step(2, 4, 2, 32, 16, seed=0)
    decodes = meta.decode_batch()
    assert native.paged_decode_attention(q, cache.double(), decodes.block_tables, decodes.context_lens) is None
    assert native.paged_decode_attention(q, cache.transpose(1, 2), decodes.block_tables, decodes.context_lens) is None
    many_heads = torch.randn(2, 96, 32)  # beyond the kernel's 64 query heads
    assert native.paged_decode_attention(many_heads, cache, decodes.block_tables, decodes.context_lens) is None


def test_loading_the_kernels_leaves_subnormal_floats_alone():
    """A library linked with -ffast-math would switch the whole process to flush-to-zero."""
    native.library("decode_attention")
    assert torch.tensor([1e-40]).mul(1.0).item() > 0


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("width, rows, first_len, kv_heads, heads", [(6, 40, 50, 3, 9), (40, 20, 590, 1, 4),
                                                                     (8, 20, 100, 4, 4)])
def test_rows_of_one_prefill_chunk_match_each_row_alone(monkeypatch, kv_dtype, width, rows, first_len, kv_heads, heads):
    # The tokens of one prefill chunk share its block table: the kernel takes them in tasks of up to
    # 16 rows. Each row must come out exactly as when it is computed alone, and match PyTorch. At
    # 590 tokens, with one kv head, each task's partitions of the context (and each row's alone)
    # run as jobs of their own. With one query head a kv head, a float16 row alone is read in place
    # (AVX-512), the chunk's rows from a converted copy.
    generator = torch.Generator().manual_seed(7)
    block_size = 16
    cache = torch.randn(2, width + 1, block_size, kv_heads, 64, generator=generator).to(kv_dtype)
    table = (torch.randperm(width, generator=generator) + 1).view(1, width)
    context_lens = torch.arange(first_len, first_len + rows)
    q = torch.randn(rows, heads, 64, generator=generator)
    tables = table.expand(rows, width).contiguous()
    together = native.paged_decode_attention(q, cache, tables, context_lens)
    alone = torch.cat([native.paged_decode_attention(q[i:i + 1], cache, table, context_lens[i:i + 1])
                       for i in range(rows)])
    assert together is not None and torch.equal(together, alone)
    meta = AttentionMetadata(list(range(rows + 1)), context_lens.tolist(), tables, torch.zeros(rows, dtype=torch.long),
                             block_size)
    monkeypatch.setattr(native, "paged_decode_attention", lambda *args: None)
    expected = attention._decode_attention(q, cache, meta.decode_batch())
    assert (together - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads, kv_heads", [(9, 3), (32, 8), (16, 16)])
def test_a_decode_row_in_a_large_batch_matches_it_alone(kv_dtype, heads, kv_heads):
    # Many rows: one job takes every kv head of a row; a row alone: a job per run of kv heads (one
    # head, or a few side by side), so that it spreads over the threads. The row's result is the
    # same either way, bit for bit.
    q, cache, meta = decode_step(48, heads, kv_heads, 64, 16, seed=11)
    cache = cache.to(kv_dtype)
    decodes = meta.decode_batch()
    together = native.paged_decode_attention(q, cache, decodes.block_tables, decodes.context_lens)
    alone = torch.cat([native.paged_decode_attention(q[i:i + 1], cache, decodes.block_tables[i:i + 1],
                                                     decodes.context_lens[i:i + 1]) for i in range(48)])
    assert together is not None and torch.equal(together, alone)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [None, 300])
@pytest.mark.parametrize("heads, kv_heads", [(9, 3), (32, 8)])
def test_a_long_row_split_over_the_threads_matches_it_in_a_large_batch(monkeypatch, kv_dtype, window, heads,
                                                                        kv_heads):
    # A long context is taken in partitions of 256 tokens. A row alone runs each partition as a
    # job of its own and folds them afterwards; in a batch of 48, one job runs them one after
    # another. The row's result is the same either way, bit for bit, and matches PyTorch.
    generator = torch.Generator().manual_seed(5)
    block_size, rows = 16, 48
    context_lens = torch.randint(1, 80, (rows,), generator=generator)
    context_lens[:4] = torch.tensor([700, 256, 257, 1000])  # several partitions, and the edges of one
    width = int(-(-context_lens.max() // block_size))
    num_blocks = rows * width + 1
    cache = torch.randn(2, num_blocks, block_size, kv_heads, 64, generator=generator).to(kv_dtype)
    tables = (torch.randperm(num_blocks - 1, generator=generator) + 1).view(rows, width)
    q = torch.randn(rows, heads, 64, generator=generator)
    together = native.paged_decode_attention(q, cache, tables, context_lens, window=window)
    alone = torch.cat([native.paged_decode_attention(q[i:i + 1], cache, tables[i:i + 1], context_lens[i:i + 1],
                                                     window=window) for i in range(4)])
    assert together is not None and torch.equal(together[:4], alone)
    meta = AttentionMetadata(list(range(rows + 1)), context_lens.tolist(), tables, torch.zeros(rows, dtype=torch.long),
                             block_size)
    monkeypatch.setattr(native, "paged_decode_attention", lambda *args: None)
    expected = attention._decode_attention(q, cache, meta.decode_batch(), window=window)
    assert (together - expected).abs().max().item() < 1e-5

