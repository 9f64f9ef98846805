"""Hyperparameters of a decoder model, read from GGUF metadata or a Hugging Face config."""
from __future__ import annotations

from dataclasses import dataclass

from rillet.model.architecture import ARCHITECTURES, SUPPORTED_ARCHITECTURES, Architecture

__all__ = ["ModelConfig", "SUPPORTED_ARCHITECTURES"]


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
    # Llama 3.1 RoPE scaling: (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
    rope_llama3: tuple[float, float, float, int] | None = None
    # Per layer: the sliding window (the most recent tokens a query sees, itself included), or None
    # for full attention; and the layer's RoPE base. Empty: every layer full, at rope_theta.
    layer_windows: tuple[int | None, ...] = ()
    layer_rope_thetas: tuple[float, ...] = ()
    # The attention's scale; None: head_dim ** -0.5.
    attention_scale: float | None = None

    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.architecture]

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else None

    def rope_base(self, layer: int) -> float:
        return self.layer_rope_thetas[layer] if self.layer_rope_thetas else self.rope_theta

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5 if self.attention_scale is None else self.attention_scale
