"""CUDA graphs for decode steps: the model's forward over one new token per sequence, captured once
for each of a few batch sizes and replayed, so a decode step costs one launch instead of a few
hundred small kernels (what vLLM and nano-vllm do).

A captured graph reads its inputs from fixed addresses, so the inputs live in static buffers sized
for the largest batch: token ids, positions, each KV group's slot mapping and block tables (padded
to a fixed width: the most blocks a sequence can have), and context lengths. A step of n sequences
runs the smallest captured size >= n: its real rows are copied into the buffers' first n rows, and
the rest are padding that writes its key and value into a scratch block no sequence owns and reads
only that block, so padding never touches a real sequence's KV. Prefill (any sequence with more than
one new token) and batches above the largest size stay eager: the caller runs them as before.

On a CUDA device the graphs are torch.cuda.CUDAGraph. Elsewhere (the CPU tests) each "graph" is an
eager stand-in that runs the same forward over the same buffers and the same metadata, built once
at capture: so the bookkeeping (sizes, padding, buffer contents, the scratch block, slicing back) is
tested without a GPU, and so is the forward's contract with a graph: it reads only the buffers'
contents, never Python values taken at capture.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rillet.model.attention_metadata import AttentionMetadata, QueryRows

# forward(input_ids [B], positions [B], meta) -> hidden [B, hidden_size]: the model over the KV cache.
Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


def capture_sizes(max_num_seqs: int) -> list[int]:
    """The batch sizes captured: 1, 2, 4, 8, then every multiple of 8, up to the first that holds
    max_num_seqs (vLLM's choice: a batch pads by fewer than 8 rows past 8)."""
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_num_seqs:
        sizes.append(sizes[-1] + 8)
    return [s for s in sizes if s < max_num_seqs] + [next(s for s in sizes if s >= max_num_seqs)]


class _EagerGraph:
    """The CPU's stand-in for a CUDA graph: the forward, run again on each replay."""

    def __init__(self, forward: Callable[[], torch.Tensor]) -> None:
        self._forward = forward
        self.output = forward()

    def replay(self) -> None:
        self.output = self._forward()


class _CudaGraph:
    """The forward captured once; its output tensor is rewritten by every replay."""

    def __init__(self, forward: Callable[[], torch.Tensor], pool) -> None:
        for _ in range(2):  # compiles Triton's kernels and sets up cuBLAS before the capture
            forward()
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = forward()
        self.pool = self.graph.pool()

    def replay(self) -> None:
        self.graph.replay()


class DecodeGraphs:
    def __init__(self, forward: Forward, max_num_seqs: int, block_size: int, max_blocks_per_seq: int,
                 scratch_block: int, device: torch.device, num_groups: int = 1,
                 layer_groups: Sequence[int] | None = None) -> None:
        """scratch_block: a block of every KV tensor that no sequence is ever given (the padding rows'
        own); num_groups, layer_groups: the KV layout's groups and each layer's (None: one group)."""
        self.forward = forward
        self.sizes = capture_sizes(max_num_seqs)
        self.block_size = block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.scratch_block = scratch_block
        self.device = torch.device(device)
        self.num_groups = num_groups
        self.layer_groups = list(layer_groups) if layer_groups is not None else None
        rows = self.sizes[-1]
        with torch.inference_mode():
            self.input_ids = torch.zeros(rows, dtype=torch.long, device=self.device)
            self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
            self.context_lens = torch.ones(rows, dtype=torch.long, device=self.device)
            self.slot_mappings = torch.full((num_groups, rows), scratch_block * block_size, dtype=torch.long,
                                            device=self.device)
            self.block_tables = torch.full((num_groups, rows, max_blocks_per_seq), scratch_block, dtype=torch.long,
                                           device=self.device)
        self.graphs: dict[int, _EagerGraph | _CudaGraph] = {}

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.device.type == "cuda"

    def size_for(self, num_seqs: int) -> int | None:
        """The smallest captured size that holds num_seqs rows; None above the largest (run eagerly)."""
        return next((s for s in self.sizes if s >= num_seqs), None) if num_seqs > 0 else None

    def metadata(self, size: int) -> AttentionMetadata:
        """The attention metadata of a graph of `size` rows, over the buffers' first `size` rows. Its
        query rows are the buffers themselves (no tensor is built from Python lists during a capture);
        its Python lists hold the padding's values and are not what the forward reads."""
        groups = []
        for g in range(self.num_groups):
            tables = self.block_tables[g, :size]
            groups.append(AttentionMetadata(
                query_start=list(range(size + 1)), context_lens=[1] * size, block_tables=tables,
                slot_mapping=self.slot_mappings[g, :size], block_size=self.block_size,
                queries=QueryRows(tables, self.context_lens[:size])))
        meta = groups[0]
        if self.num_groups > 1:
            meta.groups, meta.layer_groups = groups, self.layer_groups
        return meta

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every size, the largest first (the smaller ones reuse its memory pool), with the
        buffers all padding, so neither the capture nor its warm-up runs write a sequence's KV."""
        self._fill_padding(0, self.sizes[-1])
        pool = None
        for size in reversed(self.sizes):
            meta = self.metadata(size)
            ids, positions = self.input_ids[:size], self.positions[:size]

            def forward(ids=ids, positions=positions, meta=meta) -> torch.Tensor:
                return self.forward(ids, positions, meta)

            if self.uses_cuda_graphs:
                graph = _CudaGraph(forward, pool)
                pool = graph.pool
            else:
                graph = _EagerGraph(forward)
            self.graphs[size] = graph

    @torch.inference_mode()
    def run(self, input_ids: list[int], positions: list[int], slot_mappings: list[list[int]],
            block_tables: list[list[list[int]]], context_lens: list[int]) -> torch.Tensor | None:
        """One decode step of n sequences (one new token each): slot_mappings and block_tables per KV
        group, each sequence's table as the block manager keeps it (dead blocks negative). Returns the
        hidden states [n, hidden_size] of the real rows, or None where no graph applies (more rows
        than the largest size, or a table wider than the buffers): then the caller runs eagerly. The
        result is the graph's own output on CUDA: read it before the next run."""
        n = len(input_ids)
        size = self.size_for(n)
        width = max((len(t) for tables in block_tables for t in tables), default=0)
        if size is None or size not in self.graphs or width > self.max_blocks_per_seq:
            return None
        self.fill(input_ids, positions, slot_mappings, block_tables, context_lens, size)
        graph = self.graphs[size]
        graph.replay()
        return graph.output[:n]

    def fill(self, input_ids: list[int], positions: list[int], slot_mappings: list[list[int]],
             block_tables: list[list[list[int]]], context_lens: list[int], size: int) -> None:
        """Rows [0, n) of the buffers get the step's values, rows [n, size) padding. Table columns past
        the step's widest table keep what they held: a row reads only its first
        ceil(context_len / block_size) entries."""
        n = len(input_ids)
        pad = size - n
        pin = self.uses_cuda_graphs
        self.input_ids[:size].copy_(_host(list(input_ids) + [0] * pad, pin), non_blocking=True)
        self.positions[:size].copy_(_host(list(positions) + [0] * pad, pin), non_blocking=True)
        self.context_lens[:size].copy_(_host(list(context_lens) + [1] * pad, pin), non_blocking=True)
        scratch_slot = self.scratch_block * self.block_size
        self.slot_mappings[:, :size].copy_(_host([list(s) + [scratch_slot] * pad for s in slot_mappings], pin),
                                           non_blocking=True)
        width = max(len(t) for tables in block_tables for t in tables)
        scratch = self.scratch_block
        rows = [[[b if b >= 0 else scratch for b in t] + [scratch] * (width - len(t)) for t in tables]
                + [[scratch] * width] * pad for tables in block_tables]
        self.block_tables[:, :size, :width].copy_(_host(rows, pin), non_blocking=True)

    def _fill_padding(self, start: int, end: int) -> None:
        self.input_ids[start:end] = 0
        self.positions[start:end] = 0
        self.context_lens[start:end] = 1
        self.slot_mappings[:, start:end] = self.scratch_block * self.block_size
        self.block_tables[:, start:end] = self.scratch_block


def _host(values: list, pin: bool) -> torch.Tensor:
    """int64 values on the CPU; pinned (from PyTorch's caching host allocator) for a copy to a GPU
    that the CPU need not wait for."""
    tensor = torch.tensor(values, dtype=torch.long)
    return tensor.pin_memory() if pin else tensor
