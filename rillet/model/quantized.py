"""Matrices kept in a GGUF file's own quantized blocks rather than dequantized.

The loader hands them to the model as QuantizedWeight (rows of raw blocks, so that rows can be
concatenated and permuted as float matrices are). Linear asks KERNELS which native kernel multiplies
a block type in its weight format, and packs the blocks for it; the kernels multiply by exactly the
float32 values the file dequantizes to (quant_matmul.c, kquant_matmul.c), or round the activations
to int8 (int8_matmul.c, kquant_int8_matmul.c). A type without a kernel is dequantized to float16.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import torch

from rillet.model import kquant_blocks
from rillet.model.weight_formats import BLOCK_FORMATS  # noqa: F401 (its users import it from here too)

# The one table of block kernels: (GGML type, weight format) -> (native library, kernel); the
# library's function <library>_<kernel> multiplies blocks packed by QuantizedWeight.pack(library).
KERNELS = {
    ("Q4_0", "quantized"): ("quant_matmul", "q4"),
    ("Q4_1", "quantized"): ("quant_matmul", "q4"),
    ("Q8_0", "quantized"): ("quant_matmul", "q8"),
    ("Q5_0", "quantized"): ("kquant_matmul", "q5_0"),
    ("Q5_1", "quantized"): ("kquant_matmul", "q5_1"),
    ("Q4_K", "quantized"): ("kquant_matmul", "q4_k"),
    ("Q5_K", "quantized"): ("kquant_matmul", "q5_k"),
    ("Q6_K", "quantized"): ("kquant_matmul", "q6_k"),
    ("Q4_0", "quantized-int8"): ("int8_matmul", "q4"),
    ("Q4_1", "quantized-int8"): ("int8_matmul", "q4"),
    ("Q8_0", "quantized-int8"): ("int8_matmul", "q8"),
    ("Q5_0", "quantized-int8"): ("kquant_int8_matmul", "q5_0"),
    ("Q5_1", "quantized-int8"): ("kquant_int8_matmul", "q5_1"),
    ("Q4_K", "quantized-int8"): ("kquant_int8_matmul", "q4_k"),
    ("Q5_K", "quantized-int8"): ("kquant_int8_matmul", "q5_k"),
    ("Q6_K", "quantized-int8"): ("kquant_int8_matmul", "q6_k"),
}
LEGACY_TYPES = ("Q4_0", "Q4_1", "Q8_0")  # the 32-value blocks _fields reads
BLOCK = 32  # weights per block of those, along a row
GROUP = 16  # rows packed together for quant_matmul.c and kquant_matmul.c
INT8_GROUP = 8  # and for int8_matmul.c and kquant_int8_matmul.c


@dataclass(slots=True)
class QuantizedWeight:
    """A [out_features, in_features] matrix as rows of the file's blocks: blocks is uint8
    [out_features, in_features // 32 * bytes_per_block]."""

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
        scale, offset, q = _fields(self.ggml_type, blocks)
        # d * q is exact in float32, so d * q + m rounds once, as the file's dequantization does.
        values = scale.astype(np.float32)[..., None] * q.astype(np.float32)
        if offset is not None:
            values += offset.astype(np.float32)[..., None]
        return torch.from_numpy(values.reshape(len(ids), self.in_features))

    def pack(self, library: str) -> torch.Tensor:
        """The layout library's kernels read (described at the top of its .c file), as a flat uint8 tensor."""
        if library.startswith("kquant"):
            group = INT8_GROUP if library == "kquant_int8_matmul" else GROUP
            packed = kquant_blocks.pack(self.ggml_type, self._padded(group), group, for_int8=group == INT8_GROUP)
            return torch.from_numpy(packed)
        return self._pack_int8() if library == "int8_matmul" else self._pack()

    def _pack(self) -> torch.Tensor:
        """quant_matmul.c's layout."""
        groups, blocks, scale, offset, q = self._grouped(GROUP)
        if offset is None:  # Q8_0: [k][16 rows] int8 per block
            q = q.reshape(groups, GROUP, blocks, BLOCK).transpose(0, 2, 3, 1)
            return _flat([_by_group(scale, groups, GROUP), q.reshape(groups, blocks, -1).view(np.uint8)])
        # Pairs of k for 16 rows side by side: byte n of pair p = q(n, 2p) | q(n, 2p + 1) << 4.
        q = q.reshape(groups, GROUP, blocks, BLOCK // 2, 2).transpose(0, 2, 3, 1, 4)
        pairs = (q[..., 0] | (q[..., 1] << 4)).reshape(groups, blocks, -1)
        return _flat([_by_group(scale, groups, GROUP), _by_group(offset, groups, GROUP), pairs])

    def _pack_int8(self) -> torch.Tensor:
        """int8_matmul.c's layout."""
        groups, blocks, scale, offset, q = self._grouped(INT8_GROUP)
        # Runs of 4 consecutive k for 8 rows: [group, block, run t, row n, 4].
        q = q.reshape(groups, INT8_GROUP, blocks, BLOCK // 4, 4).transpose(0, 2, 3, 1, 4)
        if offset is None:  # Q8_0: eight runs of int8
            return _flat([_by_group(scale, groups, INT8_GROUP), q.reshape(groups, blocks, -1).view(np.uint8)])
        # Q4: k in the low nibbles of runs 0-3, k + 16 in their high nibbles.
        nibbles = (q[:, :, :4] | (q[:, :, 4:] << 4)).reshape(groups, blocks, -1)
        return _flat([_by_group(scale, groups, INT8_GROUP), _by_group(offset, groups, INT8_GROUP), nibbles])

    def _padded(self, group: int) -> np.ndarray:
        """[rows, blocks per row, bytes per block], rows padded with zero blocks to a multiple of group."""
        rows, k = self.shape
        block_values = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.ggml_type]][0]
        blocks = self.blocks.numpy().reshape(rows, k // block_values, -1)
        padded = -rows % group
        if padded:
            blocks = np.concatenate([blocks, np.zeros((padded, *blocks.shape[1:]), np.uint8)])
        return blocks

    def _grouped(self, group: int) -> tuple[int, int, np.ndarray, np.ndarray | None, np.ndarray]:
        """_padded, as (groups, blocks per row, and the block fields of _fields)."""
        blocks = self._padded(group)
        return blocks.shape[0] // group, blocks.shape[1], *_fields(self.ggml_type, blocks)


def packed_q8_rows(packed: torch.Tensor, library: str, ids: torch.Tensor, in_features: int) -> torch.Tensor:
    """Rows ids of a Q8_0 matrix packed for quant_matmul.c or int8_matmul.c, dequantized to float32
    [len(ids), in_features] exactly as QuantizedWeight.rows does: the embedding lookup of a model
    whose output head is its embedding matrix reads the head's blocks rather than a second copy."""
    group = INT8_GROUP if library == "int8_matmul" else GROUP
    blocks = in_features // BLOCK
    fields = packed.numpy().reshape(-1, blocks, group * 2 + BLOCK * group)
    ids = ids.numpy()
    g, n = ids // group, ids % group
    scale = fields[:, :, :group * 2].view(np.float16)[g, :, n]  # [rows, blocks]
    if library == "int8_matmul":  # runs of 4 consecutive k for each row: [run, row, 4]
        q = fields[:, :, group * 2:].view(np.int8).reshape(-1, blocks, BLOCK // 4, group, 4)[g, :, :, n]
    else:  # [k, row]
        q = fields[:, :, group * 2:].view(np.int8).reshape(-1, blocks, BLOCK, group)[g, :, :, n]
    values = scale.astype(np.float32)[..., None] * q.reshape(len(ids), blocks, BLOCK).astype(np.float32)
    return torch.from_numpy(values.reshape(len(ids), in_features))


def _fields(ggml_type: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """[..., bytes_per_block] uint8 -> scale d (float16 [...]), offset m (float16 [...], None for
    Q8_0) and the 32 integers q of each block ([..., 32]): the weight is d q + m.
    Q4_0 stores w = d (q - 8): its offset is -8 d, exact in float16."""
    scale = _half(blocks[..., 0:2])
    if ggml_type == "Q8_0":
        return scale, None, blocks[..., 2:34].view(np.int8)
    if ggml_type == "Q4_1":
        offset, nibbles = _half(blocks[..., 2:4]), blocks[..., 4:20]
    else:
        offset, nibbles = (scale.astype(np.float32) * -8).astype(np.float16), blocks[..., 2:18]
    # Element j of a block is in the low nibble of byte j (j < 16), element j + 16 in its high one.
    return scale, offset, np.concatenate([nibbles & 15, nibbles >> 4], axis=-1)


def _half(two_bytes: np.ndarray) -> np.ndarray:
    """[..., 2] uint8 -> [...] float16."""
    return np.ascontiguousarray(two_bytes).view(np.float16)[..., 0]


def _by_group(values: np.ndarray, groups: int, group: int) -> np.ndarray:
    """[rows, blocks] float16 -> [groups, blocks, group * 2] bytes: each block's rows side by side."""
    return np.ascontiguousarray(values.reshape(groups, group, -1).transpose(0, 2, 1)).view(np.uint8)


def _flat(parts: list[np.ndarray]) -> torch.Tensor:
    """[groups, blocks, bytes] pieces of each block, joined block by block, as flat uint8."""
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=-1)).reshape(-1))


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
