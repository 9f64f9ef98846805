"""Reads a GGUF file: its config, and its tensors dequantized into Hugging Face llama naming."""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import torch
from tqdm import tqdm

from rillet.model.config import SUPPORTED_ARCHITECTURES, ModelConfig
from rillet.model.errors import ModelLoadError

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # the gguf package raises many kinds for a bad file
        raise ModelLoadError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error})") from None


def field(reader: gguf.GGUFReader, key: str, default=None):
    entry = reader.fields.get(key)
    return default if entry is None else entry.contents()


def read_config(reader: gguf.GGUFReader) -> ModelConfig:
    arch = field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"unsupported model architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

    def required(name: str):
        value = field(reader, f"{arch}.{name}")
        if value is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{name}")
        return value

    hidden = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = field(reader, f"{arch}.vocab_size") or len(field(reader, "tokenizer.ggml.tokens", []))
    return ModelConfig(
        architecture=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(required("feed_forward_length")),
        num_layers=int(required("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(field(reader, f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(field(reader, f"{arch}.attention.key_length", hidden // num_heads)),
        rope_theta=float(field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        max_context_len=int(required("context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
    )


def hf_name(gguf_name: str) -> str | None:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}" if part in _LAYER_NAMES else None
    base, _, kind = gguf_name.rpartition(".")
    return f"{_GLOBAL_NAMES[base]}.{kind}" if base in _GLOBAL_NAMES else None


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's converter interleaves the two rotary halves of each head's q/k rows;
    this restores Hugging Face's order, so the forward can rotate halves."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def read_tensors(reader: gguf.GGUFReader, config: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for tensor in tqdm(reader.tensors, desc="loading weights", unit="tensor", leave=False):
        name = hf_name(tensor.name)
        if name is None:
            continue
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise ModelLoadError(f"tensor {tensor.name} has unsupported type {tensor.tensor_type.name}") from None
        weight = torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy
        if name.endswith("q_proj.weight"):
            weight = unpermute_rope_rows(weight, config.num_heads)
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rope_rows(weight, config.num_kv_heads)
        tensors[name] = weight.to(dtype)
    return tensors
