"""The native kernels that multiply a GGUF file's own blocks, rillet/model/native/matmul.c (activations
in float32, exact, or rounded to int8 per block), through the one table of kernels, matmul.c's as
rillet/model/quantized.py's kernels() reads it."""
from __future__ import annotations

import ctypes
import logging
import platform
import shutil
import subprocess

import gguf
import numpy as np
import pytest
import torch

from rillet.model import linear as linear_module
from rillet.model import native
from rillet.model.linear import Linear, describe_weights
from rillet.model.native import SOURCE_DIR
from rillet.model.quantized import BLOCK_FORMATS, QuantizedWeight, concat_rows, kernels
from tests.model.tiny_gguf import HAND_PACKED, hand_packed_rows, random_blocks

LEGACY_TYPES = ["Q4_0", "Q4_1", "Q8_0"]  # gguf quantizes these
K_TYPES = ["Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]  # random blocks with sane scales
TYPES = LEGACY_TYPES + K_TYPES
FORMATS = list(BLOCK_FORMATS)  # quantized, quantized-int8


def quantized(ggml_type: str, rows: int, cols: int, seed: int = 0) -> QuantizedWeight:
    if ggml_type in LEGACY_TYPES:
        values = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
        blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType[ggml_type])
    else:
        blocks = random_blocks(ggml_type, rows, cols, seed)
    return QuantizedWeight(ggml_type, torch.from_numpy(np.ascontiguousarray(blocks)), cols)


def kernel_or_skip(ggml_type: str, weight_format: str = "quantized") -> None:
    if (ggml_type, weight_format) not in kernels():
        # An x86-64 machine with a compiler must build it; elsewhere the float16 path takes over.
        assert not (shutil.which("cc") and platform.machine() == "x86_64" and "avx2" in _cpu_flags()), \
            "matmul.c failed to build"
        pytest.skip("no native kernel on this machine")


def int8_activations(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x as the int8 kernels see it: each block of 32 rounded to multiples of max|x| / 127."""
    blocks = x.reshape(x.shape[0], -1, block)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inverse) * (amax / 127)).reshape(x.shape)


def int8x2_activations(x: torch.Tensor, ggml_type: str) -> torch.Tensor:
    """x as the int8x2 kernels see it: each block of the type's rounded to int8, and what is left rounded again."""
    block = 256 if ggml_type.endswith("_K") else 32
    first = int8_activations(x, block)
    return first + int8_activations(x - first, block)


def room(expected: torch.Tensor, weight_format: str) -> float:
    """How far a kernel may be from its activations' emulation: int8x2's rounds in float32 where the kernel
    sums integers, so a hair more, relative to the outputs' size."""
    return 2e-4 + (1e-5 * expected.abs().max().item() if weight_format == "quantized-int8x2" else 0)


def activations_seen(x: torch.Tensor, ggml_type: str, weight_format: str) -> torch.Tensor:
    if weight_format == "quantized-int8":
        return int8_activations(x)
    return int8x2_activations(x, ggml_type) if weight_format == "quantized-int8x2" else x


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
    # 83 outputs: not a multiple of the 8 or 16 rows packed together; 512 inputs: two K-type blocks.
    weight = quantized(ggml_type, 83, 512)
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
    got = Linear(weight, weight_format)(x)
    expected = activations_seen(x, ggml_type, weight_format).double() @ weight.dequantize().double().T
    assert got.shape == (rows, 83) and got.dtype == torch.float32
    assert (got.double() - expected).abs().max() < room(expected, weight_format)


@pytest.mark.parametrize("ggml_type", list(HAND_PACKED))
def test_kernel_reads_hand_packed_blocks_as_the_values_they_stand_for(ggml_type):
    # Each row of the identity picks one weight: d sc q - dmin m (one rounding) is exactly what comes back.
    kernel_or_skip(ggml_type)
    raw, values = hand_packed_rows(ggml_type, 24, 256, np.random.default_rng(1))
    weight = QuantizedWeight(ggml_type, torch.from_numpy(raw), 256)
    assert torch.equal(Linear(weight, "quantized")(torch.eye(256)), torch.from_numpy(values).T)


def test_int8x2_activations_cost_almost_nothing():
    """Two roundings of each block leave about 16 bits: the product within 1e-4 of the exact one, where one
    rounding (int8) costs about a percent."""
    for ggml_type in ("Q4_1", "Q4_K"):
        kernel_or_skip(ggml_type, "quantized-int8x2")
        weight = quantized(ggml_type, 64, 512)
        x = torch.randn(16, 512, generator=torch.Generator().manual_seed(0))
        exact = x @ weight.dequantize().T
        error = (Linear(weight, "quantized-int8x2")(x) - exact).norm() / exact.norm()
        assert error < 1e-4, (ggml_type, error)


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
    linear = Linear(quantized(ggml_type, 48, 256, seed=1), weight_format)
    x = torch.randn(40, 256, generator=torch.Generator().manual_seed(2))  # more rows than a few-rows pass takes
    batched = linear(x)
    for start, stop in [(0, 1), (5, 6), (3, 5), (0, 7), (7, 23), (22, 23), (1, 5), (0, 17), (39, 40)]:
        assert torch.equal(linear(x[start:stop]), batched[start:stop])


# Bytes a kernel reads beyond the file's, per block of the file: the K types' 6-bit scales and mins (12
# bytes) held as bytes (16). Nothing else: at one row the product is bound by the bytes it reads.
UNPACKED_SCALE_BYTES = {"Q4_K": 4, "Q5_K": 4}


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("ggml_type", TYPES)
def test_a_kernel_reads_no_more_bytes_than_the_file_holds(ggml_type, weight_format):
    kernel_or_skip(ggml_type, weight_format)
    kernel = kernels()[(ggml_type, weight_format)]
    weight = quantized(ggml_type, 2 * kernel.group, 512)
    count = weight.shape[0] * weight.shape[1] // gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]][0]
    assert weight.pack(kernel).numel() == weight.blocks.numel() + count * UNPACKED_SCALE_BYTES.get(ggml_type, 0)


@pytest.mark.parametrize("ggml_type", TYPES)
def test_looked_up_rows_are_the_dequantized_rows(ggml_type):
    weight = quantized(ggml_type, 20, 512)
    ids = torch.tensor([3, 0, 19, 3])
    assert torch.equal(weight.rows(ids), weight.dequantize()[ids])


@pytest.mark.parametrize("ggml_type", K_TYPES + ["Q3_K"])
def test_rows_and_dequantize_are_ggufs_values_bit_for_bit(ggml_type):
    blocks = random_blocks(ggml_type, 20, 512, seed=4)
    weight = QuantizedWeight(ggml_type, torch.from_numpy(blocks), 512)
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[ggml_type]).reshape(20, 512))
    ids = torch.tensor([7, 19, 0, 7])
    assert torch.equal(weight.rows(ids).view(torch.int32), expected[ids].view(torch.int32))
    assert torch.equal(weight.dequantize().view(torch.int32), expected.view(torch.int32))


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("cc") is None, reason="builds x86 code with cc")
def test_portable_c_kernels_without_avx2(tmp_path):
    """matmul_scalar.h, built with -march=native -mno-avx2 (the compiler free to vectorize the portable C
    as it likes): the file's values, batch invariance, every entry of the table."""
    target = tmp_path / "matmul.so"
    subprocess.run(["cc", "-O2", "-march=native", "-mno-avx2", "-fopenmp", "-fPIC", "-ffp-contract=off", "-shared",
                    "-o", str(target), str(SOURCE_DIR / "matmul.c"), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(target))
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(5))
    for (ggml_type, weight_format), kernel in sorted(kernels().items()):
        weight = quantized(ggml_type, 21, 512)
        entries = (native._Entry * ctypes.c_int64.in_dll(lib, "MATMUL_KERNEL_COUNT").value).in_dll(lib, "MATMUL_KERNELS")
        function = next(native._MATMUL_FN(e.function) for e in entries if e.name.decode() == kernel.name)
        packed = weight.pack(kernel)

        def multiply(rows: torch.Tensor) -> torch.Tensor:
            y = torch.empty(len(rows), 21)
            assert function(rows.data_ptr(), len(rows), 512, packed.data_ptr(), 21, y.data_ptr()) == 0
            return y

        expected = activations_seen(x, ggml_type, weight_format).double() @ weight.dequantize().double().T
        assert (multiply(x).double() - expected).abs().max() < room(expected, weight_format), (ggml_type, weight_format)
        assert torch.equal(multiply(x[2:3].contiguous()), multiply(x)[2:3])


def test_rows_of_different_types_stay_in_their_blocks_multiplied_part_by_part():
    a, b = quantized("Q4_1", 4, 256), quantized("Q4_1", 6, 256, seed=3)
    both = concat_rows([a, b])
    assert isinstance(both, QuantizedWeight) and both.shape == (10, 256)
    assert torch.equal(both.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    c = quantized("Q6_K", 2, 256)
    mixed = concat_rows([a, b, c])  # q and k in one type, v in another, as Q4_K_M files mix them
    assert [part.shape for part in mixed] == [(10, 256), (2, 256)]
    x = torch.randn(3, 256)
    linear = Linear(mixed, "quantized")
    assert linear.out_features == 12 and [held[0] for held in linear.held()] == ["Q4_1", "Q6_K"]
    assert torch.equal(linear(x), torch.cat([Linear(both, "quantized")(x), Linear(c, "quantized")(x)], dim=-1))


@pytest.mark.parametrize("weight_format", FORMATS)
def test_without_the_kernel_a_quantized_matrix_uses_float16(monkeypatch, weight_format):
    monkeypatch.setattr(linear_module, "kernels", lambda: {})
    weight = quantized("Q4_1", 16, 64)
    x = torch.randn(3, 64)
    linear = Linear(weight, weight_format)
    assert torch.allclose(linear(x), x @ weight.dequantize().half().float().T, atol=1e-4)
    assert linear.held() == [("Q4_1", "float16")]


@pytest.mark.parametrize("weight_format", FORMATS)
def test_a_type_without_a_kernel_falls_back_to_float16_and_is_named(weight_format, caplog):
    kernel_or_skip("Q4_K", weight_format)
    q3 = QuantizedWeight("Q3_K", torch.from_numpy(random_blocks("Q3_K", 16, 256)), 256)
    x = torch.randn(3, 256)
    fallback = Linear(q3, weight_format)
    assert torch.allclose(fallback(x), x @ q3.dequantize().half().float().T, atol=1e-4)
    assert fallback.native_kernel() is None and fallback.held() == [("Q3_K", "float16")]
    native_one = Linear(quantized("Q4_K", 16, 256), weight_format)
    with caplog.at_level(logging.INFO, logger="rillet.model"):
        assert describe_weights([native_one, fallback], weight_format) == f"{weight_format} (Q3_K in float16)"
    assert "Q3_K by float16 (no native kernel)" in caplog.text and "Q4_K by matmul" in caplog.text
    assert describe_weights([native_one], weight_format) == weight_format
    assert describe_weights([fallback], weight_format) == "float16"  # nothing is held in blocks
    assert describe_weights([fallback], "float32") == "float32"


@pytest.mark.parametrize("weight_format", FORMATS)
def test_a_q8_0_head_serves_embedding_rows_from_its_packed_blocks(weight_format):
    """A tied Q8_0 head looks embeddings up from its own packed blocks: the same float32 rows as
    the file's blocks give, for rows in every position of a packed group, padding included."""
    weight = quantized("Q8_0", 37, 96)
    head = Linear(weight, weight_format)
    if not head.serves_rows:
        pytest.skip("no native Q8_0 kernel here")
    ids = torch.tensor([0, 1, 7, 8, 15, 16, 36, 36, 5])
    assert torch.equal(head.rows(ids), weight.rows(ids))


def test_only_a_q8_0_head_serves_rows():
    head = Linear(quantized("Q4_0", 32, 64), "quantized")
    assert not head.serves_rows and head.rows(torch.tensor([0])) is None
