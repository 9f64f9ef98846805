"""The native kernels that multiply a GGUF file's own Q4_0, Q4_1 and Q8_0 blocks: quant_matmul.c
(activations in float32, exact) and int8_matmul.c (activations rounded to int8 per block)."""
from __future__ import annotations

import platform
import shutil

import gguf
import numpy as np
import pytest
import torch

from rillet.model import native
from rillet.model.linear import BLOCK_KERNELS, Linear
from rillet.model.quantized import QuantizedWeight, concat_rows

TYPES = ["Q4_0", "Q4_1", "Q8_0"]
FORMATS = list(BLOCK_KERNELS)  # quantized, quantized-int8


def quantized(ggml_type: str, rows: int, cols: int, seed: int = 0) -> QuantizedWeight:
    values = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType[ggml_type])
    return QuantizedWeight(ggml_type, torch.from_numpy(np.ascontiguousarray(blocks)), cols)


def kernel_or_skip(ggml_type: str, weight_format: str = "quantized") -> str:
    kernel, library = quantized(ggml_type, 1, 32).kernel, BLOCK_KERNELS[weight_format]
    if not native.quant_matmul_available(kernel, library):
        # An x86-64 machine with a compiler must build it; elsewhere the float16 path takes over.
        assert not (shutil.which("cc") and platform.machine() == "x86_64" and "avx2" in _cpu_flags()), \
            f"{library}.c failed to build"
        pytest.skip("no AVX2 kernel on this machine")
    return kernel


def int8_activations(x: torch.Tensor) -> torch.Tensor:
    """x as int8_matmul.c sees it: each block of 32 rounded to multiples of max|x| / 127."""
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inverse) * (amax / 127)).reshape(x.shape)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize("rows", [1, 2, 4, 5, 6, 7, 13, 64])
def test_kernel_multiplies_by_the_files_dequantized_values(ggml_type, rows, weight_format):
    kernel_or_skip(ggml_type, weight_format)
    # 83 outputs: not a multiple of the 8 or 16 rows packed together.
    weight = quantized(ggml_type, 83, 96)
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(rows))
    got = Linear(weight, weight_format)(x)
    seen = int8_activations(x) if weight_format == "quantized-int8" else x
    expected = seen.double() @ weight.dequantize().double().T
    assert got.shape == (rows, 83) and got.dtype == torch.float32
    assert (got.double() - expected).abs().max() < 1e-4


def test_int8_activations_cost_about_a_percent_of_the_product():
    kernel_or_skip("Q4_1", "quantized-int8")
    weight = quantized("Q4_1", 64, 512)
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(0))
    exact = x @ weight.dequantize().T
    error = (Linear(weight, "quantized-int8")(x) - exact).norm() / exact.norm()
    assert 1e-3 < error < 2e-2


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("ggml_type", TYPES)
def test_a_rows_result_does_not_depend_on_the_rows_batched_with_it(ggml_type, weight_format):
    kernel_or_skip(ggml_type, weight_format)
    linear = Linear(quantized(ggml_type, 48, 128, seed=1), weight_format)
    x = torch.randn(23, 128, generator=torch.Generator().manual_seed(2))
    batched = linear(x)
    for start, stop in [(0, 1), (5, 6), (3, 5), (0, 7), (7, 23), (22, 23), (1, 5)]:
        assert torch.equal(linear(x[start:stop]), batched[start:stop])


@pytest.mark.parametrize("ggml_type", TYPES)
def test_looked_up_rows_are_the_dequantized_rows(ggml_type):
    weight = quantized(ggml_type, 20, 64)
    ids = torch.tensor([3, 0, 19, 3])
    assert torch.equal(weight.rows(ids), weight.dequantize()[ids])


def test_rows_concatenate_and_mixed_types_fall_back_to_floats():
    a, b = quantized("Q4_1", 4, 64), quantized("Q4_1", 6, 64, seed=3)
    both = concat_rows([a, b])
    assert isinstance(both, QuantizedWeight) and both.shape == (10, 64)
    assert torch.equal(both.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    mixed = concat_rows([a, quantized("Q8_0", 2, 64)])
    assert isinstance(mixed, torch.Tensor) and mixed.shape == (6, 64)


@pytest.mark.parametrize("weight_format", FORMATS)
def test_without_the_kernel_a_quantized_matrix_uses_float16(monkeypatch, weight_format):
    monkeypatch.setattr(native, "quant_matmul_available", lambda kernel, library: False)
    weight = quantized("Q4_1", 16, 64)
    x = torch.randn(3, 64)
    got = Linear(weight, weight_format)(x)
    assert torch.allclose(got, x @ weight.dequantize().half().float().T, atol=1e-4)
