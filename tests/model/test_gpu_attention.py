"""The Triton paged-attention kernel of the CUDA path (rillet/model/gpu) against a dense softmax
attention written here and against rillet's PyTorch attention, over the same paged caches. On a
machine with CUDA it runs compiled on the GPU; without one, on CPU tensors through Triton's
interpreter. Small shapes: the interpreter runs every program in Python."""
from __future__ import annotations

import functools
import multiprocessing
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from rillet.model import attention, gpu, native
from rillet.model.attention_metadata import AttentionMetadata

pytest.importorskip("triton")

from rillet.model.gpu import triton_attention  # after the skip: it imports triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel():
    """triton_attention.paged_attention. Without a GPU it runs in a child process started with
    TRITON_INTERPRET=1: triton.jit reads that variable when it decorates a function (triton's own
    library functions when triton is imported, the kernel when its module is), and triton may be
    imported in this process already, without it (torch._dynamo imports it, and transformers
    imports torch._dynamo)."""
    if DEVICE == "cuda":
        yield triton_attention.paged_attention
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        pool = multiprocessing.get_context("spawn").Pool(1)  # the child takes the environment at its start
    with pool:
        yield functools.partial(_in_child, pool)


def _in_child(pool, *args, **kwargs):
    return pool.apply(triton_attention.paged_attention, args, kwargs)


def paged_step(num_new: list[int], context_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int,
               kv_dtype: torch.dtype, seed: int):
    """Sequences with num_new[i] new tokens of context_lens[i], their blocks shuffled across the
    cache and their tables padded with block 0 (which holds noise, like any block): the metadata
    the engine builds for one step, and a cache holding every sequence's keys and values."""
    generator = torch.Generator().manual_seed(seed)
    needed = [-(-n // block_size) for n in context_lens]
    width = max(needed) + 1  # one column of padding beyond the longest
    num_blocks = sum(needed) + 1
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=generator).to(kv_dtype)
    order = (torch.randperm(num_blocks - 1, generator=generator) + 1).tolist()
    tables = torch.zeros(len(context_lens), width, dtype=torch.long)
    for i, n in enumerate(needed):
        tables[i, :n] = torch.tensor(order[:n])
        order = order[n:]
    query_start = [0]
    for n in num_new:
        query_start.append(query_start[-1] + n)
    meta = AttentionMetadata(query_start, list(context_lens), tables, torch.zeros(query_start[-1], dtype=torch.long),
                             block_size)
    return cache, meta


def dense_attention(q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, context_lens: torch.Tensor,
                    scale: float | None, window: int | None) -> torch.Tensor:
    """Row by row in float64: the row's keys and values read through its table, a plain softmax."""
    num_rows, num_heads, head_dim = q.shape
    num_kv_heads = cache.shape[3]
    scale = head_dim ** -0.5 if scale is None else scale
    out = torch.empty(num_rows, num_heads, head_dim, dtype=torch.float64)
    for r in range(num_rows):
        n = int(context_lens[r])
        first = 0 if window is None else max(n - window, 0)
        kv = cache[:, tables[r]].reshape(2, -1, num_kv_heads, head_dim)[:, first:n].double()
        keys, values = (x.repeat_interleave(num_heads // num_kv_heads, dim=1) for x in kv)  # [n, heads, dim]
        weights = (torch.einsum("hd,thd->ht", q[r].double(), keys) * scale).softmax(-1)
        out[r] = torch.einsum("ht,thd->hd", weights, values)
    return out


# Sequences of one step: decodes, one whose context is exactly two blocks, and a prefill chunk of
# six rows (contexts 45..50); block sizes 16 and 32 put them across different block boundaries.
NUM_NEW = [1, 1, 6, 1, 3]
CONTEXT_LENS = [1, 32, 50, 71, 3]


@pytest.mark.parametrize("window", [None, 24])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("block_size", [16, 32])
def test_kernel_matches_dense_attention(kernel, block_size, head_dim, kv_dtype, window):
    cache, meta = paged_step(NUM_NEW, CONTEXT_LENS, block_size, 2, head_dim, kv_dtype, seed=block_size + head_dim)
    rows = meta.query_rows()
    assert rows.context_lens.tolist() == [1, 32, 45, 46, 47, 48, 49, 50, 71, 1, 2, 3]
    q = torch.randn(len(rows.context_lens), 8, head_dim, generator=torch.Generator().manual_seed(1))
    got = kernel(q.to(DEVICE), cache.to(DEVICE), rows.block_tables.to(DEVICE), rows.context_lens.to(DEVICE),
                 window=window)
    expected = dense_attention(q, cache, rows.block_tables, rows.context_lens, None, window)
    assert got.shape == q.shape and got.dtype == q.dtype
    assert (got.cpu().double() - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (6, 2), (9, 3)])
def test_query_head_groups_that_are_not_powers_of_two(kernel, num_heads, num_kv_heads):
    cache, meta = paged_step(NUM_NEW, CONTEXT_LENS, 16, num_kv_heads, 48, torch.float32, seed=num_heads)
    rows = meta.query_rows()
    q = torch.randn(len(rows.context_lens), num_heads, 48, generator=torch.Generator().manual_seed(2))
    got = kernel(q.to(DEVICE), cache.to(DEVICE), rows.block_tables.to(DEVICE), rows.context_lens.to(DEVICE),
                 scale=0.3, window=5)
    expected = dense_attention(q, cache, rows.block_tables, rows.context_lens, 0.3, 5)
    assert (got.cpu().double() - expected).abs().max().item() < 1e-5


def test_half_queries_give_half_results(kernel):
    cache, meta = paged_step(NUM_NEW, CONTEXT_LENS, 16, 2, 64, torch.float16, seed=3)
    rows = meta.query_rows()
    q = torch.randn(len(rows.context_lens), 8, 64, generator=torch.Generator().manual_seed(3)).half()
    got = kernel(q.to(DEVICE), cache.to(DEVICE), rows.block_tables.to(DEVICE), rows.context_lens.to(DEVICE))
    expected = dense_attention(q, cache, rows.block_tables, rows.context_lens, None, None)
    assert got.dtype == torch.float16
    assert (got.cpu().double() - expected).abs().max().item() < 2e-3  # float16's rounding of the result


def test_kernel_rejects_what_it_cannot_do(kernel):
    cache, meta = paged_step([1], [5], 16, 2, 32, torch.float32, seed=0)
    rows = meta.query_rows()
    tables, lens = rows.block_tables.to(DEVICE), rows.context_lens.to(DEVICE)
    q = torch.randn(1, 4, 32, device=DEVICE)
    with pytest.raises(ValueError, match="cache"):
        kernel(q, cache.to(DEVICE, torch.float64), tables, lens)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        strided = cache.transpose(3, 4).contiguous().transpose(3, 4)  # the same shape, dim not contiguous
        kernel(q, strided.to(DEVICE), tables, lens)
    with pytest.raises(ValueError, match="KV heads"):
        kernel(torch.randn(1, 5, 32, device=DEVICE), cache.to(DEVICE), tables, lens)
    with pytest.raises(ValueError, match="window"):
        kernel(q, cache.to(DEVICE), tables, lens, window=0)


@pytest.mark.parametrize("window", [None, 20])
def test_paged_attention_dispatches_every_row_to_the_kernel(kernel, monkeypatch, window):
    """rillet's paged_attention with the CUDA path taken (pretended on the CPU) against its PyTorch
    path: decodes batched, each prefill chunk on its own, one of them a whole prompt."""
    num_new, context_lens = [1, 7, 1, 20], [40, 23, 16, 20]
    cache, meta = paged_step(num_new, context_lens, 16, 2, 64, torch.float16, seed=4)
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(sum(num_new), 8, 64, generator=generator)
    # This step's keys and values are the cache's at their positions (the PyTorch path takes a
    # whole prompt's from k and v rather than the cache).
    positions = [(i, p) for i, (n, L) in enumerate(zip(num_new, context_lens)) for p in range(L - n, L)]
    k, v = (torch.stack([cache[x, meta.block_tables[i, p // 16], p % 16] for i, p in positions]).float()
            for x in (0, 1))
    monkeypatch.setattr(native, "paged_decode_attention", lambda *args: None)
    expected = attention.paged_attention(q, k, v, cache, meta, window=window)
    taken = []
    monkeypatch.setattr(gpu, "applies", lambda cache: taken.append(cache.device.type) or True)
    monkeypatch.setattr(gpu, "kernels", lambda: SimpleNamespace(paged_attention=kernel))
    got = attention.paged_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), cache.to(DEVICE),
                                    AttentionMetadata(meta.query_start, meta.context_lens,
                                                      meta.block_tables.to(DEVICE), meta.slot_mapping.to(DEVICE), 16),
                                    window=window)
    assert taken == [DEVICE] and got.shape == expected.shape == (sum(num_new), 8 * 64)
    assert (got.cpu() - expected).abs().max().item() < 1e-5


def test_the_cpu_path_does_not_import_triton():
    """triton loads only when a cache on a CUDA device asks for the kernel."""
    code = ("import sys, torch; from rillet.model import attention, gpu; "
            "assert not gpu.applies(torch.zeros(1)); assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
