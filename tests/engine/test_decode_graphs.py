"""CUDA-graph bookkeeping of decode steps (rillet/model/gpu/decode_graphs.py) and the ModelRunner's use
of it. On the CPU each graph is DecodeGraphs' eager stand-in; with RILLET_TEST_DEVICE=cuda (bench/
gpu_check.sh on a lent GPU) the same tests capture and replay real CUDA graphs."""
from __future__ import annotations

import os

import pytest
import torch

from rillet.engine.kv_layout import KVLayout
from rillet.engine.model_runner import ModelRunner
from rillet.engine.sequence import DEAD_BLOCK
from rillet.model.gpu.decode_graphs import DecodeGraphs, capture_sizes
from tests.bench.helpers import bench_module

from .helpers import make_seq

DEVICE = torch.device(os.environ.get("RILLET_TEST_DEVICE", "cpu"))
gpu_check = bench_module("gpu_check")
BLOCK_SIZE = 4


def test_capture_sizes_are_1_2_4_8_then_steps_of_8_up_to_a_size_holding_max_num_seqs():
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 24]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(9) == [1, 2, 4, 8, 16]
    assert capture_sizes(3) == [1, 2, 4]
    assert capture_sizes(1) == [1]


def buffer_forward(ids, positions, meta):
    """A forward that shows what it read, row by row: token id, position, context length, slot and
    the first two block table entries (of the buffers, through the metadata's query rows)."""
    rows = meta.query_rows()
    return torch.stack([ids, positions, rows.context_lens, meta.slot_mapping, rows.block_tables[:, 0],
                        rows.block_tables[:, 1]], dim=1).float()


def graphs_of(forward=buffer_forward, max_num_seqs: int = 12, width: int = 6, scratch: int = 99,
              num_groups: int = 1) -> DecodeGraphs:
    graphs = DecodeGraphs(forward, max_num_seqs, BLOCK_SIZE, width, scratch, DEVICE, num_groups=num_groups,
                          layer_groups=[0, 1] if num_groups > 1 else None)
    graphs.capture()
    return graphs


def test_a_batch_runs_the_smallest_captured_size_that_holds_it():
    graphs = graphs_of()
    assert graphs.sizes == [1, 2, 4, 8, 16]
    assert [graphs.size_for(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    assert graphs.size_for(17) is None and graphs.size_for(0) is None
    assert sorted(graphs.graphs) == graphs.sizes


def test_buffers_hold_the_real_rows_then_padding_on_the_scratch_block():
    graphs = graphs_of()
    tables = [[[3, 7], [DEAD_BLOCK, 5, 6], [1]]]
    out = graphs.run([11, 12, 13], [5, 9, 2], [[29, 24, 6]], tables, [6, 10, 3])
    assert graphs.input_ids[:4].tolist() == [11, 12, 13, 0]
    assert graphs.positions[:4].tolist() == [5, 9, 2, 0]
    assert graphs.context_lens[:4].tolist() == [6, 10, 3, 1]
    assert graphs.slot_mappings[0, :4].tolist() == [29, 24, 6, 99 * BLOCK_SIZE]
    # Each table padded to the step's widest (3) with the scratch block; a dead block is the scratch
    # block too; the padding row is all scratch.
    assert graphs.block_tables[0, :4, :3].tolist() == [[3, 7, 99], [99, 5, 6], [1, 99, 99], [99, 99, 99]]
    # The output is the graph's own over the buffers, sliced to the real rows.
    assert out.tolist() == [[11, 5, 6, 29, 3, 7], [12, 9, 10, 24, 99, 5], [13, 2, 3, 6, 1, 99]]


def test_a_smaller_batch_after_a_larger_one_pads_the_rows_the_larger_one_used():
    graphs = graphs_of()
    graphs.run(list(range(1, 8)), list(range(7)), [list(range(7))], [[[i, i] for i in range(7)]], [2] * 7)
    out = graphs.run([40, 41], [3, 4], [[8, 9]], [[[2, 2], [4, 4]]], [4, 5])
    assert out.shape[0] == 2 and out[:, 0].tolist() == [40, 41]
    assert graphs.input_ids[:2].tolist() == [40, 41]
    # Size 2 replays rows 0-1; the next 8-row step must not see rows 2-6 of the step before it.
    out = graphs.run([50, 51, 52, 53, 54], [1] * 5, [[0, 1, 2, 3, 4]], [[[1]] * 5], [2] * 5)
    assert graphs.input_ids[:8].tolist() == [50, 51, 52, 53, 54, 0, 0, 0]
    assert graphs.context_lens[5:8].tolist() == [1, 1, 1]
    assert graphs.slot_mappings[0, 5:8].tolist() == [99 * BLOCK_SIZE] * 3


def test_each_kv_group_gets_its_own_slots_and_tables():
    graphs = graphs_of(num_groups=2)
    meta = graphs.metadata(2)
    assert meta.layer_groups == [0, 1] and meta.for_layer(1) is meta.groups[1]
    graphs.run([5], [6], [[26], [10]], [[[3, 6]], [[DEAD_BLOCK, 2]]], [7])
    assert graphs.slot_mappings[:, :1].tolist() == [[26], [10]]
    assert graphs.block_tables[:, 0, :2].tolist() == [[3, 6], [99, 2]]
    assert graphs.metadata(1).for_layer(1).query_rows().block_tables.tolist()[0][:2] == [99, 2]


def test_no_graph_runs_above_the_largest_size_or_past_the_table_width_or_before_capture():
    graphs = graphs_of(max_num_seqs=4, width=3)
    assert graphs.run([1] * 5, [0] * 5, [[0] * 5], [[[1]] * 5], [1] * 5) is None
    assert graphs.run([1], [13], [[13]], [[[1, 2, 3, 4]]], [14]) is None
    assert graphs.run([1], [9], [[9]], [[[1, 2, 3]]], [10]) is not None
    uncaptured = DecodeGraphs(buffer_forward, 4, BLOCK_SIZE, 3, 99, DEVICE)
    assert uncaptured.run([1], [0], [[0]], [[[1]]], [1]) is None


def test_capture_runs_only_over_padding():
    seen = []

    def forward(ids, positions, meta):
        seen.append((ids.tolist(), meta.slot_mapping.tolist(), meta.query_rows().context_lens.tolist()))
        return buffer_forward(ids, positions, meta)

    if DEVICE.type == "cuda":
        pytest.skip("a CUDA capture cannot read tensors back to the host")
    graphs_of(forward, max_num_seqs=4)
    assert [len(ids) for ids, _, _ in seen] == [4, 2, 1]  # the largest first
    for ids, slots, lens in seen:
        assert set(ids) == {0} and set(slots) == {99 * BLOCK_SIZE} and set(lens) == {1}


# The ModelRunner over a small random model, with and without graphs.

def tiny_model(layer_windows=()):
    return gpu_check.random_model(gpu_check.shape_config("tiny", layer_windows), str(DEVICE), "float32"
                                  if DEVICE.type == "cpu" else "float16", seed=1)


def runner_of(model, graphs: bool, num_blocks: int = 24, layout: KVLayout | None = None) -> ModelRunner:
    return ModelRunner(model, num_blocks, BLOCK_SIZE, torch.float16, DEVICE, layout, max_num_seqs=8,
                       decode_graphs=graphs)


def sequences(prompts: list[list[int]], num_groups: int = 1, seed: int = 0) -> list:
    """Sequences whose blocks are spread over the pool in a shuffled order, room for 8 more tokens."""
    generator = torch.Generator().manual_seed(seed)
    order = iter(torch.randperm(24, generator=generator).tolist())
    seqs = []
    for prompt in prompts:
        seq = make_seq(prompt, max_tokens=8)
        seq.block_tables = [[next(order) for _ in range(-(-(len(prompt) + 8) // BLOCK_SIZE))]
                            for _ in range(num_groups)]
        seqs.append(seq)
    return seqs


def count_replays(runner: ModelRunner) -> dict[int, int]:
    counts = {size: 0 for size in runner.decode_graphs.graphs}
    for size, graph in runner.decode_graphs.graphs.items():
        def replay(size=size, original=graph.replay):
            counts[size] += 1
            original()
        graph.replay = replay
    return counts


def step(runner: ModelRunner, seqs, num_new: list[int]) -> torch.Tensor:
    """Runs the step, then commits each sequence's computed tokens and appends its next token."""
    _, logits = runner.run(list(zip(seqs, num_new)))
    for seq, n in zip(seqs, num_new):
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append((seq.token_ids[-1] * 31 + 7) % 250 + 1)
    return logits


def assert_logits_equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to the rounding of a matrix product whose kernel depends on the batch's rows (MKL's
    float32 on the CPU, cuBLAS's float16 on a GPU): a padded batch may sum in another order. A wrong
    slot, block or length would move logits by orders of magnitude more."""
    tolerance = 1e-5 if DEVICE.type == "cpu" else 2e-3
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


PROMPTS = [[5, 9, 14, 3, 8, 2, 7], [11, 4], [6, 6, 6, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [3, 200, 17]]


def test_decode_through_graphs_matches_eager_and_prefill_stays_eager():
    model = tiny_model()
    eager, graphed = runner_of(model, False), runner_of(model, True)
    assert eager.decode_graphs is None and graphed.decode_graphs.sizes == [1, 2, 4, 8]
    counts = count_replays(graphed)
    eager_seqs, graph_seqs = sequences(PROMPTS), sequences(PROMPTS)
    lens = [len(p) for p in PROMPTS]
    assert_logits_equal(step(graphed, graph_seqs, lens), step(eager, eager_seqs, lens))
    assert sum(counts.values()) == 0  # prefill: eager
    for _ in range(2):
        assert_logits_equal(step(graphed, graph_seqs, [1] * 4), step(eager, eager_seqs, [1] * 4))
    assert counts[4] == 2
    # Three of them: size 4 with one padding row.
    assert_logits_equal(step(graphed, graph_seqs[:3], [1] * 3), step(eager, eager_seqs[:3], [1] * 3))
    assert counts[4] == 3 and sum(counts.values()) == 3
    # A step mixing a decode with a new sequence's prompt is eager.
    used = {b for seq in graph_seqs for b in seq.block_tables[0]}
    free = [b for b in range(24) if b not in used][:3]
    late_graph, late_eager = make_seq([8, 1, 2, 3, 4, 5]), make_seq([8, 1, 2, 3, 4, 5])
    late_graph.block_tables, late_eager.block_tables = [list(free)], [list(free)]
    assert_logits_equal(step(graphed, [graph_seqs[3], late_graph], [1, 6]),
                        step(eager, [eager_seqs[3], late_eager], [1, 6]))
    assert sum(counts.values()) == 3
    # The KV caches agree on every real block.
    for got, expected in zip(graphed.kv_caches, eager.kv_caches):
        assert_logits_equal(got[:, :24].float(), expected.float())


def test_padding_rows_write_only_the_scratch_block():
    model = tiny_model()
    runner = runner_of(model, True)
    seqs = sequences(PROMPTS[:3])
    step(runner, seqs, [len(p) for p in PROMPTS[:3]])
    before = [cache.clone() for cache in runner.kv_caches]
    # One decode of three sequences runs the graph of 4: one padding row.
    slots = [seq.block_tables[0][seq.num_computed_tokens // BLOCK_SIZE] * BLOCK_SIZE
             + seq.num_computed_tokens % BLOCK_SIZE for seq in seqs]
    step(runner, seqs, [1, 1, 1])
    scratch = runner.decode_graphs.scratch_block
    for old, new in zip(before, runner.kv_caches):
        changed = (old != new).flatten(3).any(-1).any(0).flatten()  # per slot: block * BLOCK_SIZE + offset
        changed_slots = set(torch.nonzero(changed).flatten().tolist())
        assert {s for s in changed_slots if s // BLOCK_SIZE != scratch} == set(slots)
        # The padding row (token 0 at position 0) writes the same key and value as the capture did.
        assert {s // BLOCK_SIZE for s in changed_slots} <= {b for seq in seqs for b in seq.block_tables[0]} | {scratch}
        assert new[:, scratch, 0].abs().sum() > 0 and not new[:, scratch, 1:].any()


def test_batches_above_the_largest_size_run_eagerly():
    model = tiny_model()
    runner = ModelRunner(model, 24, BLOCK_SIZE, torch.float16, DEVICE, max_num_seqs=2, decode_graphs=True)
    eager = runner_of(model, False)
    counts = count_replays(runner)
    seqs, eager_seqs = sequences(PROMPTS[:3]), sequences(PROMPTS[:3])
    step(runner, seqs, [len(p) for p in PROMPTS[:3]])
    step(eager, eager_seqs, [len(p) for p in PROMPTS[:3]])
    assert_logits_equal(step(runner, seqs, [1, 1, 1]), step(eager, eager_seqs, [1, 1, 1]))
    assert sum(counts.values()) == 0
    assert_logits_equal(step(runner, seqs[:2], [1, 1]), step(eager, eager_seqs[:2], [1, 1]))
    assert counts[2] == 1


def test_a_model_with_sliding_window_groups_decodes_through_graphs_as_eagerly():
    model = tiny_model(layer_windows=(6, None))
    layout = KVLayout.of(model.config.layer_windows, 2, model.config.max_context_len)
    assert layout.num_groups == 2
    eager, graphed = runner_of(model, False, layout=layout), runner_of(model, True, layout=layout)
    counts = count_replays(graphed)
    prompts = [PROMPTS[0], PROMPTS[2]]
    eager_seqs, graph_seqs = sequences(prompts, num_groups=2), sequences(prompts, num_groups=2)
    lens = [len(p) for p in prompts]
    step(eager, eager_seqs, lens)
    step(graphed, graph_seqs, lens)
    # The windowed group's first block of the long prompt now lies behind every window: freed, dead.
    for seq in (eager_seqs[1], graph_seqs[1]):
        seq.block_tables[1][0] = DEAD_BLOCK
    for _ in range(3):
        assert_logits_equal(step(graphed, graph_seqs, [1, 1]), step(eager, eager_seqs, [1, 1]))
    assert counts[2] == 3
