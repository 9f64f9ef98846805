"""The model's side of the CUDA path, checked on the CPU where it can be: how a GGUF file's weights are
held on a device other than the CPU (the same code as --device cuda, on PyTorch's meta device), that
a decode step through the graphs hands the attention kernel the graphs' static buffers themselves
(no copy), and that the model on RILLET_TEST_DEVICE in float16 agrees with float32 on the CPU. With
RILLET_TEST_DEVICE=cuda (bench/gpu_check.sh) the last two run on the GPU, through the Triton kernel."""
from __future__ import annotations

import os

import pytest
import torch

from rillet.engine.model_runner import ModelRunner
from rillet.model import gpu, load_model, native
from rillet.model.decoder import DecoderModel
from tests.bench.helpers import bench_module
from tests.engine.helpers import make_seq

DEVICE = torch.device(os.environ.get("RILLET_TEST_DEVICE", "cpu"))
gpu_check = bench_module("gpu_check")
BLOCK_SIZE = 4


def test_a_gguf_file_on_a_device_other_than_the_cpu_is_held_in_float16_matrices():
    """load_model's path for any device but the CPU: the file's blocks dequantized to float16 at load,
    multiplied by PyTorch (the block kernels are the CPU's). The meta device runs that path with no
    GPU: every tensor is moved there and no arithmetic runs."""
    try:
        from rillet.model import default_model_path
        path = default_model_path()
    except Exception as error:  # the default model's package is not on a lent GPU machine
        pytest.skip(f"no default model: {error}")
    loaded = load_model(path, device="meta")  # the default format asked for: quantized-int8x2
    model = loaded.model
    assert model.weight_format == "float16"
    assert model.native_layers is None and model.ops.lib is None
    linears = [model.lm_head] + [linear for layer in model.layers
                                 for linear in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)]
    for linear in linears:
        parts = linear._parts or [linear]
        for part in parts:
            assert part._blocks is None and part._packed is None
            assert part.weight.dtype == torch.float16 and part.weight.device.type == "meta"
    assert model.embed_tokens.dtype == torch.float16 and model.embed_tokens.device.type == "meta"
    assert model.norm.dtype == torch.float32  # vectors stay float32
    assert {cache.device.type for cache in model.allocate_kv_cache(2, 16, torch.float16)} == {"meta"}


def tiny_config():
    return gpu_check.shape_config("tiny")


def prefill_then_decode(runner: ModelRunner, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Logits of a prefill of every prompt, then of `steps` decode steps of all of them, each sequence's
    next token a fixed function of its last (so two models' runs see the same tokens)."""
    seqs, next_block = [], 0
    for prompt in prompts:
        seq = make_seq(prompt, max_tokens=steps + 1)
        count = -(-(len(prompt) + steps + 1) // BLOCK_SIZE)
        seq.block_tables = [list(range(next_block + count - 1, next_block - 1, -1))]  # in reverse order
        next_block += count
        seqs.append(seq)
    out = []
    scheduled = [(seq, len(seq.token_ids)) for seq in seqs]
    for _ in range(steps + 1):
        _, logits = runner.run(scheduled)
        out.append(logits.float().cpu())
        for seq, n in scheduled:
            seq.num_computed_tokens += n
            seq.token_ids.append((seq.token_ids[-1] * 31 + 7) % 250 + 1)
        scheduled = [(seq, 1) for seq in seqs]
    return out


PROMPTS = [[5, 9, 14, 3, 8, 2, 7], [11, 4], [6, 6, 6, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]


def test_decode_through_graphs_hands_the_attention_kernel_the_static_buffers(monkeypatch):
    calls = []
    real = gpu.paged_attention if DEVICE.type == "cuda" else None

    def recording(q, cache, block_tables, context_lens, scale=None, window=None):
        calls.append((q.shape, cache.data_ptr(), block_tables.data_ptr(), tuple(block_tables.shape),
                      block_tables.dtype, context_lens.data_ptr(), tuple(context_lens.shape)))
        if real is not None:
            return real(q, cache, block_tables, context_lens, scale, window)
        out = native.paged_decode_attention(q, cache, block_tables, context_lens, scale, window)
        assert out is not None, "the native attention kernel stands in for the Triton one on the CPU"
        return out.to(q.dtype)

    if DEVICE.type == "cpu":
        monkeypatch.setattr(gpu, "applies", lambda cache: True)
    monkeypatch.setattr(gpu, "paged_attention", recording)
    config = tiny_config()
    model = gpu_check.random_model(config, str(DEVICE), "float32" if DEVICE.type == "cpu" else "float16")
    runner = ModelRunner(model, 16, BLOCK_SIZE, torch.float16, DEVICE, max_num_seqs=8, decode_graphs=True)
    graphs = runner.decode_graphs
    width = -(-config.max_context_len // BLOCK_SIZE)
    # Each size's capture (and, on CUDA, its warm-up runs) handed the kernel the buffers' first rows.
    runs = 3 if DEVICE.type == "cuda" else 1
    assert [c[0][0] for c in calls] == [s for s in reversed(graphs.sizes) for _ in range(runs * config.num_layers)]
    for q_shape, _, tables, tables_shape, dtype, lens, lens_shape in calls:
        assert (tables, tables_shape, dtype) == (graphs.block_tables.data_ptr(), (q_shape[0], width), torch.long)
        assert (lens, lens_shape) == (graphs.context_lens.data_ptr(), (q_shape[0],))
    calls.clear()
    prefill_then_decode(runner, PROMPTS, steps=2)
    prefill, decodes = calls[:config.num_layers], calls[config.num_layers:]
    # The prefill is eager: one query row a token, its own tables.
    assert {c[0] for c in prefill} == {(sum(map(len, PROMPTS)), config.num_heads, config.head_dim)}
    assert graphs.block_tables.data_ptr() not in {c[2] for c in prefill}
    if DEVICE.type == "cuda":
        assert decodes == []  # replays launch the captured kernels; no Python runs
        return
    assert len(decodes) == 2 * config.num_layers
    for layer, (q_shape, cache, tables, tables_shape, dtype, lens, lens_shape) in enumerate(decodes):
        # Three sequences: the graph of 4, reading rows 0-3 of the buffers in place.
        assert q_shape == (4, config.num_heads, config.head_dim)
        assert cache == runner.kv_caches[layer % config.num_layers].data_ptr()
        assert (tables, tables_shape, dtype) == (graphs.block_tables.data_ptr(), (4, width), torch.long)
        assert (lens, lens_shape) == (graphs.context_lens.data_ptr(), (4,))


def test_float16_on_the_test_device_agrees_with_float32_on_the_cpu():
    """The same random weights: float32 on the CPU, and float16 matrices on RILLET_TEST_DEVICE (with
    graphs where that is CUDA), through a prefill and greedy decode steps."""
    config = tiny_config()
    weights = gpu_check.random_weights(config, "cpu", torch.float32, seed=3)
    reference = DecoderModel(config, dict(weights), "float32")
    with torch.device(DEVICE):
        model = DecoderModel(config, {name: w.to(DEVICE) for name, w in weights.items()}, "float16")
    expected = prefill_then_decode(ModelRunner(reference, 16, BLOCK_SIZE, torch.float32, torch.device("cpu")),
                                   PROMPTS, steps=4)
    runner = ModelRunner(model, 16, BLOCK_SIZE, torch.float16, DEVICE, max_num_seqs=8)
    assert (runner.decode_graphs is not None) == (DEVICE.type == "cuda" and gpu.kernels() is not None)
    got = prefill_then_decode(runner, PROMPTS, steps=4)
    for step, (g, e) in enumerate(zip(got, expected)):
        # Logits of about 0.1-0.5: float16 weights and KV round at about 1e-3 of that.
        torch.testing.assert_close(g, e, atol=3e-3, rtol=2e-2, msg=lambda m, step=step: f"step {step}: {m}")
