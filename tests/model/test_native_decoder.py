"""All decoder layers in one native call (rillet/model/native/decoder_layers.c) against the
Python loop over the same kernels: the same logits bit for bit, in every kind of step."""
from __future__ import annotations

import ctypes
import platform
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rillet.model.decoder import DecoderModel
from rillet.model.gguf_file import open_gguf
from rillet.model.gguf_config import read_config
from rillet.model.gguf_loader import read_tensors
from rillet.model import native
from rillet.model.native import decoder_layers
from rillet.model.quantized import kernels
from tests.model.test_forward_parity import BLOCK_SIZE, PROMPTS, PagedSequences, run_step
from tests.model.tiny_gguf import Q, random_blocks, write_raw_gguf


def logits_of_steps(model, kv_dtype: torch.dtype) -> list[torch.Tensor]:
    """Every prompt's first token, then a step that mixes prefill chunks, a single prompt token
    and a decode, then a decode step."""
    prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    cache = model.model.allocate_kv_cache(64, BLOCK_SIZE, kv_dtype)
    paged = PagedSequences(len(prompts))
    first = run_step(model, cache, paged, [p[:1] for p in prompts])
    rest = [p[1:] if i % 2 == 0 else p[1:2] for i, p in enumerate(prompts)]
    assert len(prompts[-1]) == 1 and all(rest[:-1]) and len(rest[0]) > 1  # so the last one decodes
    second = run_step(model, cache, paged, [ids or [int(first[-1][-1].argmax())] for ids in rest])
    third = run_step(model, cache, paged, [[int(logits[-1].argmax())] for logits in second])
    return first + second + third


@pytest.fixture(params=["ours_quantized", "ours_int8"])
def quantized_model(request):
    model = request.getfixturevalue(request.param)
    if model.model.native_layers is None:
        assert not (shutil.which("cc") and platform.machine() == "x86_64"), "the native decoder failed to build"
        pytest.skip("no native kernels here")
    return model


@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.float32])
@torch.inference_mode()
def test_native_layers_compute_the_python_loops_logits_exactly(quantized_model, kv_dtype, monkeypatch):
    native = logits_of_steps(quantized_model, kv_dtype)
    monkeypatch.setattr(quantized_model.model, "native_layers", None)
    python = logits_of_steps(quantized_model, kv_dtype)
    assert len(native) == len(python) == 3 * len(PROMPTS)
    for got, expected in zip(native, python):
        assert torch.equal(got, expected)


@torch.inference_mode()
def test_native_layers_are_skipped_where_attention_has_no_kernel(quantized_model):
    runner = quantized_model.model.native_layers
    too_big_blocks = quantized_model.model.allocate_kv_cache(2, 128, torch.float16)
    assert not runner.supports(too_big_blocks)
    assert not runner.supports(quantized_model.model.allocate_kv_cache(4, BLOCK_SIZE, torch.bfloat16))
    assert runner.supports(quantized_model.model.allocate_kv_cache(4, BLOCK_SIZE, torch.float16))


def test_float_formats_run_the_python_loop(ours, ours_float16):
    assert ours.model.native_layers is None and ours_float16.model.native_layers is None


# A two-layer model whose matrices are of every block type with a native kernel, mixed within q/k/v
# and gate/up as Q4_K_M files mix them (a run of one type, then another).
BLOCK_TYPES = {"token_embd": "Q6_K", "output": "Q5_K",
               "blk.0": {"attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "Q6_K", "attn_output": "Q5_K",
                         "ffn_gate": "Q4_K", "ffn_up": "Q4_K", "ffn_down": "Q6_K"},
               "blk.1": {"attn_q": "Q5_0", "attn_k": "Q5_0", "attn_v": "Q5_1", "attn_output": "Q5_1",
                         "ffn_gate": "Q5_K", "ffn_up": "Q6_K", "ffn_down": "Q4_K"}}
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 256, 512, 4, 2, 64


def block_type_model(tmp_path, weight_format: str, replace: dict[str, str] | None = None):
    """The model above, loaded as the server loads a file; replace: {"blk.0.ffn_down": "Q3_K"}."""
    shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN // 2, HIDDEN), "attn_v": (HIDDEN // 2, HIDDEN),
              "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (INTERMEDIATE, HIDDEN), "ffn_up": (INTERMEDIATE, HIDDEN),
              "ffn_down": (HIDDEN, INTERMEDIATE)}
    types = {"token_embd": ("Q6_K", (VOCAB, HIDDEN)), "output": ("Q5_K", (VOCAB, HIDDEN))}
    types |= {f"{layer}.{name}": (kind, shapes[name]) for layer in ("blk.0", "blk.1")
              for name, kind in BLOCK_TYPES[layer].items()}
    types |= {name: (kind, types[name][1]) for name, kind in (replace or {}).items()}
    tensors = {f"{name}.weight": (random_blocks(kind, *shape, seed=i), Q[kind])
               for i, (name, (kind, shape)) in enumerate(types.items())}
    for norm in ("output_norm", "blk.0.attn_norm", "blk.0.ffn_norm", "blk.1.attn_norm", "blk.1.ffn_norm"):
        tensors[f"{norm}.weight"] = (np.ones(HIDDEN, np.float32), Q.F32)
    file = open_gguf(write_raw_gguf(tmp_path / "blocks.gguf", tensors, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, 2, VOCAB))
    config = read_config(file)
    weights = read_tensors(file, config, torch.float16, keep_quantized=True)
    return SimpleNamespace(model=DecoderModel(config, weights, weight_format))


def block_type_logits(loaded) -> list[torch.Tensor]:
    """A prefill of three prompts, a step mixing a chunk and decodes, then a decode step."""
    cache = loaded.model.allocate_kv_cache(16, BLOCK_SIZE, torch.float16)
    paged = PagedSequences(3)
    first = run_step(loaded, cache, paged, [[5, 9, 2, 40, 33], [7], [11, 12, 13]])
    second = run_step(loaded, cache, paged, [[1, 2, 3, 4], [int(first[1][-1].argmax())], [8]])
    return first + second + run_step(loaded, cache, paged, [[int(s[-1].argmax())] for s in second])


@pytest.mark.parametrize("weight_format", ["quantized", "quantized-int8"])
@torch.inference_mode()
def test_native_layers_take_every_block_type_and_compute_the_python_loops_logits(tmp_path, weight_format,
                                                                                    monkeypatch):
    loaded = block_type_model(tmp_path, weight_format)
    if loaded.model.native_layers is None:
        assert not (shutil.which("cc") and platform.machine() == "x86_64"), "the native decoder failed to build"
        pytest.skip("no native kernels here")
    assert loaded.model.weight_format == weight_format
    native = block_type_logits(loaded)
    monkeypatch.setattr(loaded.model, "native_layers", None)
    python = block_type_logits(loaded)
    assert all(torch.isfinite(logits).all() for logits in native)
    for got, expected in zip(native, python):
        assert torch.equal(got, expected)


def test_a_block_type_without_a_kernel_is_named_in_the_weight_format(tmp_path):
    loaded = block_type_model(tmp_path, "quantized", replace={"blk.1.ffn_down": "Q3_K", "output": "Q2_K"})
    native = ("Q4_K", "quantized") in kernels()  # else every matrix is float16
    assert loaded.model.weight_format == ("quantized (Q2_K, Q3_K in float16)" if native else "float16")
    assert loaded.model.native_layers is None  # the loop needs every matrix native


def test_the_ctypes_classes_lay_out_decoder_layers_c_structs_exactly():
    lib = native.library("decoder_layers")
    if lib is None:
        pytest.skip("no native kernels here")
    c = decoder_layers.c_layout(lib)
    assert {"linear_t", "layer_t", "decoder_t", "kv_caches_t", "layer_t.post_mlp_norm"} <= c.keys()
    assert decoder_layers.layout_differences(lib) == []


@torch.inference_mode()
def test_a_struct_that_differs_from_c_is_found_and_the_python_loop_runs(ours_quantized, monkeypatch, caplog):
    lib = native.library("decoder_layers")
    if lib is None:
        pytest.skip("no native kernels here")

    class LinearMissingAField(ctypes.Structure):  # out_features dropped: the sizes and a field differ
        _fields_ = [("multiply", ctypes.c_void_p), ("packed", ctypes.c_void_p), ("in_features", ctypes.c_int64)]

    names = {**decoder_layers._C_NAMES}
    del names[decoder_layers._Linear]
    monkeypatch.setattr(decoder_layers, "_C_NAMES", {LinearMissingAField: "linear_t", **names})
    assert decoder_layers.layout_differences(lib) == [
        "linear_t: ctypes 24, C 32", "linear_t.out_features: ctypes None, C 24"]
    assert decoder_layers.NativeDecoder.build(ours_quantized.model) is None
    assert "disagree (linear_t: ctypes 24, C 32" in caplog.text


def test_the_attention_limits_come_from_the_kernel_that_enforces_them():
    limits = native.decode_attention_limits()
    if limits is None:
        pytest.skip("no native kernels here")
    q = torch.zeros(1, limits.heads, 64)
    context_lens = torch.tensor([1])
    inside = torch.zeros(2, 1, limits.block_size, limits.heads, 64)
    beyond = torch.zeros(2, 1, limits.block_size + 1, limits.heads, 64)
    tables = torch.zeros(1, 1, dtype=torch.int64)
    assert native.paged_decode_attention(q, inside, tables, context_lens) is not None
    assert native.paged_decode_attention(q, beyond, tables, context_lens) is None
    one_head_too_many = torch.zeros(1, limits.heads + 1, 64)
    assert native.paged_decode_attention(one_head_too_many, inside[:, :, :, :1].contiguous(), tables, context_lens) is None
