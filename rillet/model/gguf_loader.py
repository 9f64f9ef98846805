"""A GGUF file's tensors, dequantized or kept in their blocks, in Hugging Face naming (the family's
own, rillet/model/architecture.py). Its config: rillet/model/gguf_config.py."""
from __future__ import annotations

import re

import gguf
import numpy as np
import torch
from tqdm import tqdm

from rillet.model.architecture import ARCHITECTURES, Architecture
from rillet.model.config import ModelConfig
from rillet.model.errors import ModelLoadError
from rillet.model.gguf_file import GGUFFile, GGUFTensor
from rillet.model.quantized import QuantizedWeight

# rope_freqs (Llama 3.1 style per-frequency scaling) has no Hugging Face tensor; it keeps a rillet name.
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
                 "rope_freqs": "rope_freq_factors"}


def hf_name(gguf_name: str, arch: Architecture = ARCHITECTURES["llama"]) -> str | None:
    """The Hugging Face name of a GGUF tensor in the family's naming; None for a name it does not know."""
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        layer, part, kind = match.groups()
        names = arch.gguf_layer_names
        return f"model.layers.{layer}.{names[part]}.{kind}" if part in names else None
    base, _, kind = gguf_name.rpartition(".")
    return f"{_GLOBAL_NAMES[base]}.{kind}" if base in _GLOBAL_NAMES else None


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's converter interleaves the two rotary halves of each head's q/k rows (its rope
    rotates adjacent pairs); this restores Hugging Face's order, so the forward can rotate halves."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def dequantize(tensor: GGUFTensor, rows: int | None = None) -> torch.Tensor:
    """The tensor (its first rows only, where given) as float32 in torch order."""
    data = tensor.data if rows is None else tensor.data[:rows]
    try:
        array = gguf.quants.dequantize(data, tensor.tensor_type)
    except NotImplementedError:
        raise ModelLoadError(f"tensor {tensor.name} has unsupported type {tensor.tensor_type.name}") from None
    if array.dtype != np.float32 or not array.flags.writeable:
        array = np.array(array, dtype=np.float32)  # torch wants its own writable float32 memory
    return torch.from_numpy(array.reshape(-1, *tensor.shape[1:]))


def read_tensors(file: GGUFFile, config: ModelConfig, dtype: torch.dtype,
                 keep_quantized: bool = False) -> dict[str, torch.Tensor | QuantizedWeight]:
    """Every tensor the model uses, by its Hugging Face name: matrices in dtype, vectors in float32.
    keep_quantized: matrices in a quantized block type stay in their blocks (Linear multiplies them
    with a native kernel, or dequantizes the types that have none)."""
    tensors: dict[str, torch.Tensor | QuantizedWeight] = {}
    arch = config.arch
    unknown = [t.name for t in file.tensors if hf_name(t.name, arch) is None]
    if unknown:
        raise ModelLoadError(f"the {arch.name} model in {file.path} has tensors rillet does not read: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    for tensor in tqdm(file.tensors, desc="loading weights", unit="tensor", leave=False):
        name = hf_name(tensor.name, arch)
        if keep_quantized and len(tensor.shape) == 2 and gguf.GGML_QUANT_SIZES[tensor.tensor_type][0] > 1:
            dequantize(tensor, rows=1)  # a type gguf cannot read fails here, as a whole matrix would
            blocks = torch.from_numpy(np.array(tensor.data, dtype=np.uint8).reshape(tensor.shape[0], -1))
            weight = QuantizedWeight(tensor.tensor_type.name, blocks, tensor.shape[1])
        else:
            weight = dequantize(tensor)
            weight = weight.to(dtype) if weight.dim() > 1 else weight
        if arch.gguf_interleaved_rope and name.endswith("q_proj.weight"):
            weight = _unpermute(weight, config.num_heads)
        elif arch.gguf_interleaved_rope and name.endswith("k_proj.weight"):
            weight = _unpermute(weight, config.num_kv_heads)
        tensors[name] = weight
    return tensors


def _unpermute(weight: torch.Tensor | QuantizedWeight, num_heads: int) -> torch.Tensor | QuantizedWeight:
    """Rows move whole, so a quantized matrix's rows of blocks move as a float matrix's rows do."""
    if isinstance(weight, QuantizedWeight):
        return weight.with_rows(unpermute_rope_rows(weight.blocks, num_heads).contiguous())
    return unpermute_rope_rows(weight, num_heads)
