"""Matrices kept in a GGUF file's own quantized blocks rather than dequantized.

The loader hands them to the model as QuantizedWeight (rows of raw blocks, so that rows can be
concatenated and permuted as float matrices are). Linear asks kernels() which native kernel multiplies
a block type in its weight format (rillet/model/native/matmul.c's table) and packs the blocks for it;
the kernels multiply by exactly the float32 values the file dequantizes to (weight format "quantized",
activations in float32), or round the activations to int8 ("quantized-int8"). A type without a kernel
is dequantized to float16.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import gguf
import numpy as np
import torch

from rillet.model import block_packing, native
from rillet.model.native import BlockKernel
from rillet.model.weight_formats import BLOCK_FORMATS  # noqa: F401 (its users import it from here too)

# The activation mode of matmul.c's table that each weight format of blocks multiplies in.
MODES = {"quantized": "float32", "quantized-int8x2": "int8x2", "quantized-int8": "int8"}
LEGACY_TYPES = ("Q4_0", "Q4_1", "Q8_0")  # the 32-value blocks rows() reads
BLOCK = 32  # weights per block of those, along a row


@cache
def kernels(isa: str | None = None) -> dict[tuple[str, str], BlockKernel]:
    """The one table of block kernels, (GGML type, weight format) -> the kernel that multiplies it: matmul.c's
    MATMUL_KERNELS as built for isa (default: the machine's). Empty where the kernels cannot be built here."""
    formats = {mode: weight_format for weight_format, mode in MODES.items()}
    return {(ggml_type, formats[kernel.mode]): kernel for kernel in native.block_kernels(isa).values()
            for ggml_type in kernel.ggml_types}


@dataclass(slots=True)
class QuantizedWeight:
    """A [out_features, in_features] matrix as rows of the file's blocks: blocks is uint8
    [out_features, in_features // block values * bytes_per_block]."""

    ggml_type: str
    blocks: torch.Tensor
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks.shape[0], self.in_features

    def with_rows(self, blocks: torch.Tensor) -> QuantizedWeight:
        return QuantizedWeight(self.ggml_type, blocks, self.in_features)

    def dequantize(self) -> torch.Tensor:
        """float32 [out_features, in_features]."""
        array = gguf.quants.dequantize(self.blocks.numpy(), gguf.GGMLQuantizationType[self.ggml_type])
        return torch.from_numpy(np.array(array, dtype=np.float32).reshape(self.shape))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows ids dequantized, float32 [len(ids), in_features]: the embedding lookup."""
        if self.ggml_type not in LEGACY_TYPES:
            array = gguf.quants.dequantize(self.blocks.index_select(0, ids).numpy(),
                                           gguf.GGMLQuantizationType[self.ggml_type])
            return torch.from_numpy(np.array(array, dtype=np.float32).reshape(len(ids), self.in_features))
        blocks = self.blocks.index_select(0, ids).numpy().reshape(len(ids), self.in_features // BLOCK, -1)
        header, q = block_packing.fields(self.ggml_type, blocks)
        # d * q is exact in float32, so d * q + m rounds once, as the file's dequantization does.
        values = header[0].astype(np.float32) * q.astype(np.float32)
        if (offset := block_packing.block_offset(self.ggml_type, header)) is not None:
            values += offset
        return torch.from_numpy(values.reshape(len(ids), self.in_features))

    def pack(self, kernel: BlockKernel) -> torch.Tensor:
        """The layout kernel reads (rillet/model/native/matmul_table.h), as a flat uint8 tensor."""
        return torch.from_numpy(block_packing.pack(self.ggml_type, self._padded(kernel.group), kernel.mode, kernel.group))

    def _padded(self, group: int) -> np.ndarray:
        """[rows, blocks per row, bytes per block], rows padded with zero blocks to a multiple of group."""
        rows, k = self.shape
        block_values = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.ggml_type]][0]
        blocks = self.blocks.numpy().reshape(rows, k // block_values, -1)
        padded = -rows % group
        if padded:
            blocks = np.concatenate([blocks, np.zeros((padded, *blocks.shape[1:]), np.uint8)])
        return blocks


def packed_q8_rows(packed: torch.Tensor, kernel: BlockKernel, ids: torch.Tensor, in_features: int) -> torch.Tensor:
    """Rows ids of a Q8_0 matrix packed for kernel, dequantized to float32 [len(ids), in_features] exactly as
    QuantizedWeight.rows does: the embedding lookup of a model whose output head is its embedding matrix
    reads the head's blocks rather than a second copy."""
    group, blocks = kernel.group, in_features // BLOCK
    fields = packed.numpy().reshape(-1, blocks, group * 2 + BLOCK * group)
    ids = ids.numpy()
    g, n = ids // group, ids % group
    scale = fields[:, :, :group * 2].view(np.float16)[g, :, n]  # [rows, blocks]
    if kernel.mode != "float32":  # runs of 4 consecutive k for each row: [run, row, 4]
        q = fields[:, :, group * 2:].view(np.int8).reshape(-1, blocks, BLOCK // 4, group, 4)[g, :, :, n]
    else:  # [k, row]
        q = fields[:, :, group * 2:].view(np.int8).reshape(-1, blocks, BLOCK, group)[g, :, :, n]
    values = scale.astype(np.float32)[..., None] * q.reshape(len(ids), blocks, BLOCK).astype(np.float32)
    return torch.from_numpy(values.reshape(len(ids), in_features))


Weight = torch.Tensor | QuantizedWeight


def concat_rows(weights: list[Weight]) -> Weight | list[Weight]:
    """Stacks matrices with the same in_features: one matrix where all are float or all share one
    block type, else a list of the runs that do (a Q4_K_M file's q, k in Q4_K and v in Q6_K), each
    kept as it is for Linear to multiply one by one."""
    runs: list[list[Weight]] = []
    for w in weights:
        if runs and _kind(runs[-1][0]) == _kind(w):
            runs[-1].append(w)
        else:
            runs.append([w])
    stacked = [torch.cat(run) if isinstance(run[0], torch.Tensor) else
               run[0].with_rows(torch.cat([w.blocks for w in run])) for run in runs]
    return stacked[0] if len(stacked) == 1 else stacked


def _kind(weight: Weight) -> str | None:
    return weight.ggml_type if isinstance(weight, QuantizedWeight) else None
