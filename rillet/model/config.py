"""Hyperparameters of a Llama-family model, read from GGUF metadata or a Hugging Face config."""
from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(slots=True, frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_context_len: int
    tie_word_embeddings: bool
    # Linear RoPE scaling: positions are divided by this factor before rotation.
    rope_scaling_factor: float = 1.0
