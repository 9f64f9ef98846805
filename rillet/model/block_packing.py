"""A GGUF file's blocks as rillet/model/native/matmul.c reads them: each type's fields, and their packing
for each activation mode (the layout matmul_table.h describes: groups of output rows side by side).

Every type's weight is a (q - bias) + b for an integer q of 4 to 8 bits, with a and b per sub-block
(32 values; 16 for Q6_K) as gguf's dequantization computes them in float32:
    Q4_0: a = d, b = -8 d (computed, exact in float32)     Q4_1: a = d, b = m     Q8_0: a = d (q signed)
    Q5_0: a = d, bias 16        Q5_1: a = d, b = m
    Q4_K, Q5_K: a = d sc, b = -(dmin m)        Q6_K: a = d sc, bias 32
d, m and dmin are float16 per block (a super-block of 256 values for the K types); sc and m are
6-bit per sub-block (sc is int8 for Q6_K). The products d sc and dmin m are exact in float32; the
kernels compute them from the header fields packed here.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np


@dataclass(frozen=True, slots=True)
class Layout:
    block: int  # values per block of the file
    sub_block: int  # values per scale a (and offset b)
    bits: int  # of q
    bias: int  # subtracted from q; 0 where the type has an offset b or a signed q


LAYOUTS = {"Q4_0": Layout(32, 32, 4, 0), "Q4_1": Layout(32, 32, 4, 0), "Q8_0": Layout(32, 32, 8, 0),
           "Q5_0": Layout(32, 32, 5, 16), "Q5_1": Layout(32, 32, 5, 0), "Q4_K": Layout(256, 32, 4, 0),
           "Q5_K": Layout(256, 32, 5, 0), "Q6_K": Layout(256, 16, 6, 32)}


def fields(ggml_type: str, blocks: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """[..., bytes_per_block] uint8 -> (the header fields, each [..., count] float16, uint8 or int8, in
    the order the kernels read them; q, [..., block] before the bias: uint8, or int8 for Q8_0)."""
    def half(start: int) -> np.ndarray:
        return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)

    def nibbles(qs: np.ndarray, run: int) -> np.ndarray:
        """Runs of `run` bytes: their low nibbles are values 0..run-1 of a run, the high ones the next run values."""
        qs = qs.reshape(*qs.shape[:-1], -1, 1, run)
        return np.concatenate([qs & 15, qs >> 4], axis=-2).reshape(*qs.shape[:-3], -1)

    if ggml_type == "Q8_0":
        return [half(0)], blocks[..., 2:34].view(np.int8)
    if ggml_type in ("Q4_0", "Q4_1"):
        header = [half(0), half(2)] if ggml_type == "Q4_1" else [half(0)]  # Q4_0's b = -8 d: the kernels compute it
        return header, nibbles(blocks[..., 2 * len(header):2 * len(header) + 16], 16)
    if ggml_type in ("Q5_0", "Q5_1"):
        header = [half(0)] if ggml_type == "Q5_0" else [half(0), half(2)]
        start = 2 * len(header)
        high = np.ascontiguousarray(blocks[..., start:start + 4]).view(np.uint32)  # bit j: bit 4 of q_j
        high = (high >> np.arange(32, dtype=np.uint32)) & 1
        return header, nibbles(blocks[..., start + 4:start + 20], 16) | (high.astype(np.uint8) << 4)
    if ggml_type in ("Q4_K", "Q5_K"):
        shape = blocks.shape[:-1]
        sc, m = gguf.quants.Q4_K.get_scale_min(np.ascontiguousarray(blocks[..., 4:16]).reshape(-1, 12))
        header = [half(0), half(2), sc.reshape(*shape, 8), m.reshape(*shape, 8)]
        if ggml_type == "Q4_K":
            return header, nibbles(blocks[..., 16:144], 32)
        high = (blocks[..., None, 16:48] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # bit s of byte l: sub-block s
        return header, nibbles(blocks[..., 48:176], 32) | (high.reshape(*shape, 256) << 4)
    if ggml_type == "Q6_K":
        low = nibbles(blocks[..., 0:128], 64)
        high = (blocks[..., None, 128:192].reshape(*blocks.shape[:-1], 2, 1, 32)
                >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3  # [half, shift, 32]
        return [half(208), blocks[..., 192:208].view(np.int8)], low | (high.reshape(low.shape) << 4)
    raise ValueError(f"no packing for {ggml_type}")


def block_offset(ggml_type: str, header: list[np.ndarray]) -> np.ndarray | None:
    """A legacy type's b per block, float32 (Q4_1: m; Q4_0: -8 d, which pack() leaves to the kernels), or
    None for the types without one."""
    if ggml_type == "Q4_0":
        return header[0].astype(np.float32) * -8
    return header[1].astype(np.float32) if len(header) > 1 else None


def pack(ggml_type: str, blocks: np.ndarray, mode: str, group: int) -> np.ndarray:
    """[rows, blocks per row, bytes] uint8, rows a multiple of group -> the flat uint8 layout matmul.c reads
    in mode ("float32", or "int8" and "int8x2", which share theirs), group rows side by side (matmul_table.h
    describes it)."""
    layout = LAYOUTS[ggml_type]
    header, q = fields(ggml_type, blocks)
    groups, count = blocks.shape[0] // group, blocks.shape[1]
    # Each header field with the group's rows side by side: [groups, block, field, row].
    parts = [np.ascontiguousarray(f.reshape(groups, group, count, -1).transpose(0, 2, 3, 1)).view(np.uint8)
             .reshape(groups, count, -1) for f in header]
    # q with the rows innermost: [groups, block, value, row].
    q = q.view(np.uint8).reshape(groups, group, count, layout.block).transpose(0, 2, 3, 1)
    body = _float_body(q, layout) if mode == "float32" else _int8_body(q, layout.bits)
    return np.ascontiguousarray(np.concatenate([*parts, body], axis=-1)).reshape(-1)


def _float_body(q: np.ndarray, layout: Layout) -> np.ndarray:
    """Per sub-block: for 8 bits each value's row bytes; else pairs of values (byte n: the low 4 bits of
    q(n, 2j) | those of q(n, 2j + 1) << 4), then bit 4 (5 bits) or bits 4-5 (6 bits) of runs of 8 or 4
    values (bit t or bits 2t, 2t + 1 of byte n: those of q(n, 8c + t) or q(n, 4c + t))."""
    *outer, values, rows = q.shape
    if layout.bits == 8:
        return q.reshape(*outer, -1)
    q = q.reshape(*outer, values // layout.sub_block, layout.sub_block, rows)
    low = q & 15
    pieces = [low[..., 0::2, :] | (low[..., 1::2, :] << 4)]
    if layout.bits > 4:
        width = layout.bits - 4
        per_byte = 8 // width
        high = (q >> 4).reshape(*q.shape[:-2], -1, per_byte, rows) << (width * np.arange(per_byte, dtype=np.uint8))[:, None]
        pieces.append(np.bitwise_or.reduce(high, axis=-2))
    return np.concatenate([p.reshape(*q.shape[:-2], -1) for p in pieces], axis=-1).reshape(*outer, -1)


def _int8_body(q: np.ndarray, bits: int) -> np.ndarray:
    """Per 32 values: for 8 bits eight runs (byte 4n + i of run t: q(n, 4t + i)); else four runs (byte 4n + i
    of run t: the low 4 bits of q(n, 4t + i) | those of q(n, 16 + 4t + i) << 4), then for 5 bits 4G bytes
    (bit u of byte 4n + i: bit 4 of q(n, 4u + i)), for 6 bits two halves of 4G bytes (bits 2t, 2t + 1 of
    byte 4n + i of half h: bits 4-5 of q(n, 16h + 4t + i))."""
    *outer, values, rows = q.shape
    q = q.reshape(*outer, values // 32, 32, rows)
    if bits == 8:
        return q.reshape(*q.shape[:-2], 8, 4, rows).swapaxes(-1, -2).reshape(*outer, -1)
    low = (q & 15).reshape(*q.shape[:-2], 2, 4, 4, rows).swapaxes(-1, -2)  # [half, t, row, i]
    pieces = [low[..., 0, :, :, :] | (low[..., 1, :, :, :] << 4)]
    if bits == 5:
        high = ((q >> 4).reshape(*q.shape[:-2], 8, 4, rows).transpose(*range(q.ndim - 2), -1, -2, -3)
                << np.arange(8, dtype=np.uint8))  # [row, i, u]
        pieces.append(np.bitwise_or.reduce(high, axis=-1))
    elif bits == 6:
        high = ((q >> 4).reshape(*q.shape[:-2], 2, 4, 4, rows).transpose(*range(q.ndim - 2), -4, -1, -2, -3)
                << (2 * np.arange(4, dtype=np.uint8)))  # [half, row, i, t]
        pieces.append(np.bitwise_or.reduce(high, axis=-1))
    return np.concatenate([p.reshape(*q.shape[:-2], -1) for p in pieces], axis=-1).reshape(*outer, -1)
