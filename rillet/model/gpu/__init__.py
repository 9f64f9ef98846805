"""The CUDA path's kernels, written in Triton. Nothing here imports triton until a KV cache on a
CUDA device asks for it, so `rillet serve` on the CPU and the HTTP process never load it."""
from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("rillet.model")


@functools.cache
def kernels():
    """rillet.model.gpu.triton_attention, or None where triton is not installed (then the CUDA path
    gathers the KV with PyTorch, as on the CPU)."""
    try:
        from rillet.model.gpu import triton_attention
    except ImportError as error:
        log.warning("triton is not installed (%s): attention on the GPU gathers each sequence's KV blocks "
                    "with PyTorch; pip install 'rillet[gpu]' for the paged Triton kernel", error)
        return None
    return triton_attention


def applies(cache: torch.Tensor) -> bool:
    """Whether paged attention over this cache runs the Triton kernel: a cache on a CUDA device,
    triton installed."""
    return cache.device.type == "cuda" and kernels() is not None


def paged_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                    scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """See triton_attention.paged_attention; only where applies(cache)."""
    return kernels().paged_attention(q, cache, block_tables, context_lens, scale, window)
