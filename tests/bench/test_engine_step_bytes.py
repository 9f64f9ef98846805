"""bench/engine_step.py's count of the bytes a decode step reads, against figures worked out by
hand for a tiny two-layer model (hidden 64, intermediate 128, 4 heads, 2 KV heads of 16, a
40-token vocabulary, the output head tied to the embedding, every matrix Q8_0)."""
from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest
import torch

from rillet.model.decoder import DecoderModel
from rillet.model.gguf_config import read_config
from rillet.model.gguf_file import open_gguf
from rillet.model.gguf_loader import read_tensors
from rillet.model.weight_formats import BLOCK_FORMATS
from tests.bench.helpers import bench_module
from tests.model.tiny_gguf import Q, write_raw_gguf

engine_step = bench_module("engine_step")

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 128, 4, 2, 2, 40
HEAD_DIM = HIDDEN // HEADS
# [out_features, in_features] of each layer's matrices as the model holds them (q, k, v stacked;
# gate and up stacked).
QKV, O, GATE_UP, DOWN = (HIDDEN + 2 * KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN), \
    (HIDDEN, INTERMEDIATE)


def tiny_model(tmp_path, weight_format: str) -> DecoderModel:
    rng = np.random.default_rng(0)
    shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
              "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
              "ffn_gate": (INTERMEDIATE, HIDDEN), "ffn_up": (INTERMEDIATE, HIDDEN), "ffn_down": (HIDDEN, INTERMEDIATE)}
    matrices = {"token_embd": (VOCAB, HIDDEN)} | {f"blk.{i}.{name}": shape for i in range(LAYERS)
                                                  for name, shape in shapes.items()}
    tensors = {f"{name}.weight": (gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32), Q.Q8_0), Q.Q8_0)
               for name, shape in matrices.items()}
    for norm in ["output_norm", *(f"blk.{i}.{n}" for i in range(LAYERS) for n in ("attn_norm", "ffn_norm"))]:
        tensors[f"{norm}.weight"] = (np.ones(HIDDEN, np.float32), Q.F32)
    file = open_gguf(write_raw_gguf(tmp_path / "tiny.gguf", tensors, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LAYERS,
                                    VOCAB))
    config = read_config(file)
    quantized = weight_format in BLOCK_FORMATS
    weights = read_tensors(file, config, torch.float16 if quantized or weight_format == "float16" else torch.float32,
                           keep_quantized=quantized)
    return DecoderModel(config, weights, weight_format)


def q8_packed(rows: int, cols: int) -> int:
    """matmul.c's Q8_0 layout in FLOAT32 mode: rows padded to groups of 16, 34 bytes (a float16 scale and 32
    int8) per block of 32 weights of each row."""
    return -(-rows // 16) * 16 * cols // 32 * 34


VECTORS = (2 * LAYERS + 1) * HIDDEN * 4  # two float32 norms a layer and the final one


@pytest.mark.parametrize("weight_format", ["quantized", "float16", "float32"])
def test_weight_bytes_of_a_tiny_model(tmp_path, weight_format):
    model = tiny_model(tmp_path, weight_format)
    if weight_format == "quantized":
        if model.weight_format != "quantized":
            pytest.skip(f"no native Q8_0 kernel here (weights held as {model.weight_format})")
        layer = q8_packed(*QKV) + q8_packed(*O) + q8_packed(*GATE_UP) + q8_packed(*DOWN)
        assert layer == 128 * 2 * 34 + 64 * 2 * 34 + 256 * 2 * 34 + 64 * 4 * 34 == 39168
        head = q8_packed(VOCAB, HIDDEN)
        assert head == 48 * 2 * 34  # 40 rows padded to 48
        row = 2 * 34  # the embedding row is read from the tied head's blocks
    else:
        size = 2 if weight_format == "float16" else 4
        layer = sum(out * inp for out, inp in (QKV, O, GATE_UP, DOWN)) * size
        head = VOCAB * HIDDEN * size
        row = HIDDEN * size
    counted = engine_step.weight_bytes(model)
    assert counted == {"layers": LAYERS * layer, "vectors": VECTORS, "head": head,
                       "per_step": LAYERS * layer + VECTORS + head, "embedding_row": row}


def test_step_bytes_add_the_kv_cache_each_sequence_reads(tmp_path):
    model = tiny_model(tmp_path, "float32")
    weights = LAYERS * sum(out * inp for out, inp in (QKV, O, GATE_UP, DOWN)) * 4 + VECTORS + VOCAB * HIDDEN * 4
    # Two sequences of 5 and 9 tokens (the new one included), every layer: keys and values of
    # 2 KV heads x 16 float16 values per token.
    kv = (5 + 9) * LAYERS * KV_HEADS * HEAD_DIM * 2 * 2
    assert kv == 3584
    counted = engine_step.step_bytes(model, [5, 9], torch.float16)
    assert counted == {"weight_bytes": weights + 2 * HIDDEN * 4, "kv_bytes": kv, "bytes": weights + 2 * HIDDEN * 4 + kv}
    assert engine_step.kv_bytes(model.config, [5, 9], torch.float32) == 2 * kv


def test_a_sliding_window_layer_reads_at_most_its_window(tmp_path):
    config = dataclasses.replace(tiny_model(tmp_path, "float32").config, layer_windows=(4, None))
    per_token = KV_HEADS * HEAD_DIM * 2 * 2
    # Layer 0 sees the last 4 tokens of each sequence (4 + 4), layer 1 all of them (5 + 9).
    assert engine_step.kv_bytes(config, [5, 9], torch.float16) == (4 + 4 + 5 + 9) * per_token
    assert engine_step.kv_bytes(config, [3], torch.float16) == (3 + 3) * per_token


def test_bandwidth_is_measured_with_one_thread_and_with_the_engines():
    threads = torch.get_num_threads()
    measured = engine_step.measure_bandwidth(threads, repeats=1, gib=1 / 64)
    assert measured["bandwidth_gb_per_s_1thread"] > 0 and measured["bandwidth_gb_per_s"] > 0
    assert torch.get_num_threads() == threads
