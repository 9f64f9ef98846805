"""Turns a scheduled batch into tensors, runs the model over the paged KV cache, and returns
the logits of the sequences whose computed tokens reach their end (those sample a token)."""
from __future__ import annotations

import torch

from rillet.engine.kv_layout import KVLayout
from rillet.engine.sequence import DEAD_BLOCK, Sequence
from rillet.model import gpu
from rillet.model.attention_metadata import AttentionMetadata
from rillet.model.gpu.decode_graphs import DecodeGraphs


class ModelRunner:
    def __init__(self, model: torch.nn.Module, num_blocks: int, block_size: int,
                 kv_dtype: torch.dtype, device: torch.device, layout: KVLayout | None = None,
                 max_num_seqs: int | None = None, decode_graphs: bool | None = None) -> None:
        """num_blocks: the pool's blocks; with a layout of several KV groups, its pages (each layer
        keeps its keys and values in one of layout.group_size tensors of that many blocks).
        decode_graphs: capture decode steps of up to max_num_seqs sequences as graphs (DecodeGraphs);
        None: on a CUDA device where the Triton attention kernel runs (it reads the graphs' buffers
        in place), never on the CPU. True on the CPU runs DecodeGraphs' eager stand-in (the tests)."""
        self.model = model
        self.block_size = block_size
        self.device = device
        self.layout = layout
        if decode_graphs is None:
            decode_graphs = torch.device(device).type == "cuda" and gpu.kernels() is not None
        decode_graphs = decode_graphs and max_num_seqs is not None
        # The graphs' padding rows write and read one more block, which no sequence is ever given.
        allocated = num_blocks + 1 if decode_graphs else num_blocks
        if layout is None or layout.num_groups == 1:
            self.kv_caches: list[torch.Tensor] = model.allocate_kv_cache(allocated, block_size, kv_dtype)
            self._tensors = self.kv_caches
        else:
            self._tensors = model.allocate_kv_cache(allocated, block_size, kv_dtype, count=layout.group_size)
            self.kv_caches = [self._tensors[slot] for slot in layout.layer_slots]
        self.decode_graphs: DecodeGraphs | None = None
        if decode_graphs:
            self.decode_graphs = self._capture_decode_graphs(num_blocks, max_num_seqs)

    @torch.inference_mode()
    def run(self, scheduled: list[tuple[Sequence, int]]) -> tuple[list[Sequence], torch.Tensor | None]:
        """Computes each sequence's next num_new tokens; returns the sequences that sample this step
        and their logits, one row each. Call copy_blocks first with the step's block copies."""
        input_ids: list[int] = []
        positions: list[int] = []
        query_start = [0]
        context_lens: list[int] = []
        sampling_rows: list[int] = []
        sampling_seqs: list[Sequence] = []
        num_groups = 1 if self.layout is None else self.layout.num_groups
        slot_mappings: list[list[int]] = [[] for _ in range(num_groups)]
        bs = self.block_size
        for seq, num_new in scheduled:
            start = seq.num_computed_tokens
            end = start + num_new
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            for slots, table in zip(slot_mappings, seq.block_tables):
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_start.append(query_start[-1] + num_new)
            context_lens.append(end)
            if end == seq.num_tokens:
                sampling_rows.append(query_start[-1] - 1)
                sampling_seqs.append(seq)
        hidden = None
        if self.decode_graphs is not None and len(input_ids) == len(scheduled):  # one new token each
            tables = [[seq.block_tables[group] for seq, _ in scheduled] for group in range(num_groups)]
            hidden = self.decode_graphs.run(input_ids, positions, slot_mappings, tables, context_lens)
        if hidden is None:
            hidden = self._forward(scheduled, input_ids, positions, query_start, context_lens, slot_mappings)
        if not sampling_rows:
            return [], None
        if len(sampling_rows) < hidden.shape[0]:  # else every row samples (decode): all of hidden, in order
            hidden = hidden.index_select(0, torch.tensor(sampling_rows, dtype=torch.long, device=self.device))
        return sampling_seqs, self.model.compute_logits(hidden)

    def _forward(self, scheduled: list[tuple[Sequence, int]], input_ids: list[int], positions: list[int],
                 query_start: list[int], context_lens: list[int], slot_mappings: list[list[int]]) -> torch.Tensor:
        """The model, eagerly, over the step's flat batch."""
        num_groups = len(slot_mappings)
        groups = [AttentionMetadata(
            query_start=query_start,
            context_lens=context_lens,
            block_tables=self._block_tables(scheduled, group),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=self.device),
            block_size=self.block_size,
        ) for group, slots in enumerate(slot_mappings)]
        meta = groups[0]
        if num_groups > 1:
            meta.groups, meta.layer_groups = groups, list(self.layout.layer_groups)
        return self.model(
            torch.tensor(input_ids, dtype=torch.long, device=self.device),
            torch.tensor(positions, dtype=torch.long, device=self.device),
            self.kv_caches,
            meta,
        )

    def _capture_decode_graphs(self, scratch_block: int, max_num_seqs: int) -> DecodeGraphs:
        """Graphs of the model's forward over this runner's KV cache, one per decode batch size. Block
        tables are as wide as the model's context needs (a wider one runs eagerly)."""
        max_context_len = getattr(getattr(self.model, "config", None), "max_context_len", None)
        width = -(-max_context_len // self.block_size) if max_context_len else scratch_block
        layout = self.layout
        graphs = DecodeGraphs(
            lambda ids, positions, meta: self.model(ids, positions, self.kv_caches, meta),
            max_num_seqs, self.block_size, width, scratch_block, self.device,
            num_groups=1 if layout is None else layout.num_groups,
            layer_groups=None if layout is None or layout.num_groups == 1 else layout.layer_groups)
        graphs.capture()
        return graphs

    def _block_tables(self, scheduled: list[tuple[Sequence, int]], group: int) -> torch.Tensor:
        """The group's block tables, padded with block 0 (as are dead blocks: no query reads them)."""
        tables = [seq.block_tables[group] for seq, _ in scheduled]
        width = max(len(table) for table in tables)
        # Dead blocks, always a prefix, are mapped only in tables that have them.
        rows = [(table if not table or table[0] != DEAD_BLOCK else [max(b, 0) for b in table])
                + [0] * (width - len(table)) for table in tables]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """The (source, destination) copies of copy-on-write, before the step's forward reads them."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], dtype=torch.long, device=self.device)
        dst = torch.tensor([d for _, d in copies], dtype=torch.long, device=self.device)
        for cache in self._tensors:
            # cache is [2, num_blocks, block_size, kv_heads, head_dim]
            cache[:, dst] = cache[:, src]
