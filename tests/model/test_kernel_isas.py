"""The table of kernels across instruction sets: every entry of rillet/model/native/matmul.c's table
(rillet/model/quantized.py's kernels()), built for each instruction set this machine runs (AVX-512,
AVX2), gives exactly the result of its scalar reference, the portable C build of the same driver, at
every batch size; and the machine's instruction set is chosen at start."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rillet.model import native
from rillet.model.quantized import MODES, kernels
from tests.model.test_quantized_weights import quantized

ISAS = native.machine_isas()
VECTOR_ISAS = [isa for isa in ISAS if isa != "scalar"]
pytestmark = pytest.mark.skipif(native.library("matmul", "scalar") is None, reason="no C compiler here")


@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("ggml_type,weight_format", sorted(kernels()))
def test_each_instruction_set_gives_its_scalar_references_result_bit_for_bit(ggml_type, weight_format, isa):
    kernel, reference_kernel = kernels(isa)[(ggml_type, weight_format)], kernels("scalar")[(ggml_type, weight_format)]
    assert (kernel.isa, reference_kernel.isa) == (isa, "scalar")
    # 83 outputs: not a multiple of the 8 or 16 rows packed together; 512 inputs: two K-type blocks.
    weight = quantized(ggml_type, 83, 512)
    packed = weight.pack(kernel)
    generator = torch.Generator().manual_seed(7)
    # the single-row path; a few rows, in one pass or several (2-8 rows each); whole and partial tiles
    for rows in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 32, 33, 64):
        x = torch.randn(rows, 512, generator=generator)
        x[0, :32] = 0  # a block of zeros: its int8 scale is 0
        got = native.block_matmul(x, packed, kernel, 83)
        reference = native.block_matmul(x, packed, reference_kernel, 83)
        assert torch.equal(got, reference), (rows, (got - reference).abs().max().item())
        # and each row's result is that row's alone
        assert torch.equal(native.block_matmul(x[-1:], packed, kernel, 83), got[-1:])


def test_the_table_has_every_block_type_in_every_mode_and_says_which_code_path_it_took():
    types = {"Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}
    for isa in ISAS:
        table = kernels(isa)
        assert set(table) == {(ggml_type, weight_format) for ggml_type in types for weight_format in MODES}
        assert {kernel.isa for kernel in table.values()} == {isa} and native.kernel_isa("matmul", isa) == isa
        assert {kernel.group for kernel in table.values()} == {16}


def test_the_machines_best_instruction_set_is_chosen_and_rillet_isa_may_lower_it():
    assert native.machine_isa() == (os.environ.get("RILLET_ISA") if os.environ.get("RILLET_ISA") in ISAS else ISAS[0])
    code = ("import logging; logging.basicConfig(level=logging.INFO);"
            "from rillet.model import native; print(native.machine_isa(), native.kernel_isa('matmul'))")
    for wanted, expected in [("scalar", "scalar scalar"), ("no-such-isa", f"{ISAS[0]} {native.kernel_isa('matmul', ISAS[0])}")]:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "RILLET_ISA": wanted})
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected.split()
        if wanted == "no-such-isa":
            assert "RILLET_ISA=no-such-isa is not one this CPU runs" in result.stderr


@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("ggml_type", ["Q4_0", "Q4_1", "Q8_0", "Q5_0"])
def test_blocks_of_32_rounded_eight_at_a_time_and_one_by_one_give_the_scalar_result(ggml_type, isa):
    # 96 inputs: three blocks of 32 a row, so that a batch's blocks are eights and some left over, which
    # int8x2 rounds one at a time (matmul.c's quantize_blocks2_8 and quantize_block2).
    kernel, reference_kernel = kernels(isa)[(ggml_type, "quantized-int8x2")], kernels("scalar")[(ggml_type, "quantized-int8x2")]
    packed = quantized(ggml_type, 40, 96).pack(kernel)
    generator = torch.Generator().manual_seed(3)
    for rows in (1, 2, 3, 5, 8, 11):
        x = torch.randn(rows, 96, generator=generator) * torch.logspace(-3, 2, 96)
        x[0, 32:64] = 0  # a block of zeros: its scale is 0
        got = native.block_matmul(x, packed, kernel, 40)
        assert torch.equal(got, native.block_matmul(x, packed, reference_kernel, 40)), rows
        assert torch.equal(native.block_matmul(x[-1:], packed, kernel, 40), got[-1:])
