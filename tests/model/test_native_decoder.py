"""All decoder layers in one native call (rillet/model/native/decoder_layers.c) against the
Python loop over the same kernels: the same logits bit for bit, in every kind of step."""
from __future__ import annotations

import platform
import shutil

import pytest
import torch

from tests.model.test_forward_parity import BLOCK_SIZE, PROMPTS, PagedSequences, run_step


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
