"""Linear layers in the weight format the device multiplies fastest.

float32: the file's dequantized weights, exact; F.linear.
float16: weights rounded to float16, activations and accumulation stay float32. On the CPU the
    weights are packed once for FBGEMM's fp16 GEMM (about 1.5x faster than float32 at batch
    16-64 on AVX2, and half the memory); elsewhere they are plain float16 tensors.
quantized: matrices the GGUF file stores as Q4_0, Q4_1 or Q8_0 stay in those blocks and are
    multiplied by a native kernel (rillet/model/native/quant_matmul.c) at exactly the float32
    values the file dequantizes to, reading a quarter of float16's bytes. Other matrices (other
    block types, safetensors folders, a device without the kernel) use float16.
quantized-int8: the same blocks, but each block of 32 activations is rounded to int8 (scale
    max|x| / 127) and multiplied as integers (rillet/model/native/int8_matmul.c), as llama.cpp
    does; faster, and no longer exact (README, "Speed and accuracy", gives the measured cost).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from rillet.model import native
from rillet.model.quantized import QuantizedWeight

WEIGHT_FORMATS = ("quantized", "quantized-int8", "float16", "float32")
# The native library that multiplies the file's blocks, for each format that keeps them.
BLOCK_KERNELS = {"quantized": "quant_matmul", "quantized-int8": "int8_matmul"}
DEFAULT_WEIGHT_FORMAT = "quantized"


class Linear:
    """y = x @ weight.T for weight [out_features, in_features]."""

    def __init__(self, weight: torch.Tensor | QuantizedWeight, weight_format: str = "float32") -> None:
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {weight_format!r} (choose from {', '.join(WEIGHT_FORMATS)})")
        self.out_features, self.in_features = weight.shape
        self.weight: torch.Tensor | None = None
        self._packed = None
        self._blocks: torch.Tensor | None = None
        self._kernel = None
        self._library = BLOCK_KERNELS.get(weight_format)
        if isinstance(weight, QuantizedWeight):
            if self._library and native.quant_matmul_available(weight.kernel, self._library):
                self._kernel = weight.kernel
                self._blocks = weight.pack_int8() if self._library == "int8_matmul" else weight.pack()
                return
            weight = weight.dequantize()
        if self._library:
            weight_format = "float16"
        if weight_format == "float16" and weight.device.type == "cpu" and _fbgemm_fp16_available():
            self._packed = torch.ops.quantized.linear_prepack_fp16(weight.float().contiguous(), None)
        elif weight_format == "float16":
            self.weight = weight.to(torch.float16)
        else:
            self.weight = weight.float()

    def native_kernel(self) -> tuple[int, torch.Tensor, int, int] | None:
        """(kernel address, packed weights, in_features, out_features) where a native block kernel
        multiplies this layer's weights, for native code that calls it directly; else None."""
        if self._blocks is None:
            return None
        return native.matmul_address(self._kernel, self._library), self._blocks, self.in_features, self.out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._blocks is not None:
            return native.quant_matmul(x, self._blocks, self._kernel, self.out_features, self._library)
        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic_fp16(x, self._packed)
        return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)


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
