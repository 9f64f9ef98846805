"""Linear layers in the weight format the device multiplies fastest.

float32: the file's dequantized weights, exact; F.linear.
float16: weights rounded to float16, activations and accumulation stay float32. On the CPU the
    weights are packed once for FBGEMM's fp16 GEMM (about 1.5x faster than float32 at batch
    16-64 on AVX2, and half the memory); elsewhere they are plain float16 tensors.
quantized: matrices the GGUF file stores in a block type with a native kernel (Q4_0, Q4_1, Q8_0,
    Q5_0, Q5_1, Q4_K, Q5_K, Q6_K: rillet/model/quantized.py's kernels(), native/matmul.c's table)
    stay in those blocks and are multiplied at exactly the float32 values the file dequantizes to,
    reading a quarter of float16's bytes. Other matrices (other block types, safetensors folders, a
    device without the kernel) use float16, and the model's weight_format names them (describe_weights).
quantized-int8x2 (the default): the same blocks times activations rounded twice to int8 (each block,
    then what that rounding left), integer products at about 16 bits of the activations: within 1e-4 of
    the exact product, as close to float32 as float16 weights are (bench/quality.py).
quantized-int8: the same blocks, but each block of 32 activations is rounded to int8 once (scale
    max|x| / 127) and multiplied as integers, as llama.cpp does; fastest, and no longer exact (README,
    "Speed and accuracy", gives the cost).
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter

import torch
import torch.nn.functional as F

from rillet.model import native
from rillet.model.native import BlockKernel
from rillet.model.quantized import QuantizedWeight, Weight, kernels, packed_q8_rows
from rillet.model.weight_formats import BLOCK_FORMATS, DEFAULT_WEIGHT_FORMAT, WEIGHT_FORMATS

__all__ = ["DEFAULT_WEIGHT_FORMAT", "WEIGHT_FORMATS", "Linear", "describe_weights"]

log = logging.getLogger("rillet.model")
UNQUANTIZED = "unquantized"  # what held() calls a matrix the file stores in floats


class Linear:
    """y = x @ weight.T for weight [out_features, in_features]; a list of weights (concat_rows's
    runs of different block types) is multiplied part by part, the outputs side by side."""

    def __init__(self, weight: Weight | list[Weight], weight_format: str = "float32") -> None:
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {weight_format!r} (choose from {', '.join(WEIGHT_FORMATS)})")
        self.weight: torch.Tensor | None = None
        self._packed = None
        self._blocks: torch.Tensor | None = None
        self._kernel: BlockKernel | None = None  # the native kernel multiplying _blocks
        self._parts = [Linear(part, weight_format) for part in weight] if isinstance(weight, list) else []
        self._stack: torch.Tensor | None = None
        if self._parts:
            self.in_features, self.out_features = self._parts[0].in_features, sum(p.out_features for p in self._parts)
            return
        self.out_features, self.in_features = weight.shape
        self.source = weight.ggml_type if isinstance(weight, QuantizedWeight) else UNQUANTIZED
        if isinstance(weight, QuantizedWeight):
            kernel = kernels().get((weight.ggml_type, weight_format))
            if kernel is not None:
                self._kernel = kernel
                self._blocks = weight.pack(kernel)
                return
            weight = weight.dequantize()
        if weight_format in BLOCK_FORMATS:
            weight_format = "float16"
        if weight_format == "float16" and weight.device.type == "cpu" and _fbgemm_fp16_available():
            self._packed = torch.ops.quantized.linear_prepack_fp16(weight.float().contiguous(), None)
        elif weight_format == "float16":
            self.weight = weight.to(torch.float16)
        else:
            self.weight = weight.float()

    def held(self) -> list[tuple[str, str]]:
        """(the file's type, what multiplies it) for each part: ("Q4_K", "matmul float32_q4_k on avx2"),
        ("Q3_K", "float16"), ("unquantized", "float32")... A block kernel names the code path its
        library was built with (rillet/model/native: the machine's instruction set)."""
        if self._parts:
            return [held for part in self._parts for held in part.held()]
        if self._kernel is not None:
            return [(self.source, f"matmul {self._kernel.name} on {self._kernel.isa}")]
        float16 = self._packed is not None or self.weight.dtype == torch.float16
        return [(self.source, "float16" if float16 else "float32")]

    def rows(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Rows ids of the weight, float32 [len(ids), in_features], read from the packed blocks where
        the weight is Q8_0 in a legacy block kernel's layout (the one a tied embedding needs); else None."""
        if not self.serves_rows:
            return None
        return packed_q8_rows(self._blocks, self._kernel, ids, self.in_features)

    @property
    def serves_rows(self) -> bool:
        return not self._parts and self.source == "Q8_0" and self._kernel is not None

    def native_kernel(self) -> tuple[int, torch.Tensor, int, int] | None:
        """(kernel address, packed weights, in_features, out_features) where native block kernels
        multiply this layer's weights, for native code that calls it directly; else None. Parts
        are multiplied by native/decoder_layers.c's stacked_matmul, one kernel after another."""
        if self._parts:
            kernels = [part.native_kernel() for part in self._parts]
            stacked = native.stacked_matmul_address()
            if stacked is None or any(k is None for k in kernels):
                return None
            if self._stack is None:  # [parts, then (kernel, packed, out_features) per part]
                fields = [v for address, packed, _, n in kernels for v in (address, packed.data_ptr(), n)]
                self._stack = torch.tensor([len(kernels), *fields], dtype=torch.int64)
            return stacked, self._stack, self.in_features, self.out_features
        if self._blocks is None:
            return None
        return self._kernel.address, self._blocks, self.in_features, self.out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._parts:
            return torch.cat([part(x) for part in self._parts], dim=-1)
        if self._blocks is not None:
            return native.block_matmul(x, self._blocks, self._kernel, self.out_features)
        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic_fp16(x, self._packed)
        return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)


def describe_weights(linears: list[Linear], weight_format: str) -> str:
    """weight_format as the matrices are held, for the model to report: the format itself where every
    matrix has its block kernel, else naming the file's types that fell back to float16 ("quantized
    (Q3_K in float16)"), or float16 where none has one. Logs which types got which kernel."""
    if weight_format not in BLOCK_FORMATS:
        return weight_format
    held = Counter(h for linear in linears for h in linear.held())
    log.info("%s weights: %s", weight_format, ", ".join(
        f"{count} {source} by {how if how != 'float16' else 'float16 (no native kernel)'}"
        for (source, how), count in sorted(held.items())))
    fallback = sorted({source for source, how in held if how == "float16"})
    if not fallback:
        return weight_format
    if all(how == "float16" for _, how in held):
        return "float16"
    return f"{weight_format} ({', '.join(fallback)} in float16)"


_FBGEMM: bool | None = None


def _fbgemm_fp16_available() -> bool:
    """FBGEMM ships in PyTorch's x86 CPU builds; elsewhere the float16 path uses plain tensors."""
    global _FBGEMM
    if _FBGEMM is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = torch.ops.quantized.linear_prepack_fp16(torch.ones(2, 2), None)
                _FBGEMM = bool(torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 2), probe).sum() == 4)
        except (RuntimeError, AttributeError):
            _FBGEMM = False
    return _FBGEMM
