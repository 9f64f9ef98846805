"""The decoder forward, written once for every family (rillet/model/architecture.py says which of
its switches a family turns on): RMSNorm, RoPE, grouped-query attention over a paged cache (with a
sliding window where a layer has one), a gated MLP; q/k biases and norms, sandwich norms and scaled
embeddings where the family has them. It runs over a flat batch of tokens from many sequences."""
from __future__ import annotations

import math

import numpy as np
import torch

from rillet.model.attention import paged_attention
from rillet.model.attention_metadata import AttentionMetadata
from rillet.model.config import ModelConfig
from rillet.model.errors import ModelLoadError
from rillet.model.layer_ops import LayerOps
from rillet.model.linear import Linear, describe_weights
from rillet.model.native.decoder_layers import NativeDecoder
from rillet.model.quantized import QuantizedWeight, concat_rows

Rope = dict[float, tuple[torch.Tensor, torch.Tensor]]  # RoPE base -> (cos, sin) of this step's positions


class DecoderLayer(torch.nn.Module):
    """Takes its tensors out of weights as it packs them, so loading never holds two copies."""

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], index: int, weight_format: str,
                 ops: LayerOps) -> None:
        super().__init__()
        self.config = config
        self.ops = ops
        arch = config.arch

        def take(name: str) -> torch.Tensor:
            return weights.pop(f"model.layers.{index}.{name}")

        self.attn_norm = take("input_layernorm.weight")
        self.mlp_norm = take(f"{arch.mlp_norm_name}.weight")
        # One matmul for q, k and v, and one for gate and up.
        self.qkv_proj = Linear(concat_rows([take(f"self_attn.{p}_proj.weight") for p in "qkv"]), weight_format)
        self.qkv_bias = torch.cat([take(f"self_attn.{p}_proj.bias") for p in "qkv"]) if arch.qkv_bias else None
        self.q_norm, self.k_norm = ((take("self_attn.q_norm.weight"), take("self_attn.k_norm.weight"))
                                    if arch.qk_norm else (None, None))
        self.post_attn_norm, self.post_mlp_norm = (
            (take("post_attention_layernorm.weight"), take("post_feedforward_layernorm.weight"))
            if arch.sandwich_norms else (None, None))
        self.o_proj = Linear(take("self_attn.o_proj.weight"), weight_format)
        self.gate_up_proj = Linear(concat_rows([take("mlp.gate_proj.weight"), take("mlp.up_proj.weight")]),
                                   weight_format)
        self.down_proj = Linear(take("mlp.down_proj.weight"), weight_format)
        self.window = config.window(index)
        self.rope_base = config.rope_base(index)

    def forward(self, hidden: torch.Tensor, delta: torch.Tensor | None, rope: Rope, cache: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden + delta is the residual stream entering the layer (the previous layer's output is
        added here, with the norm, in one pass); returns the stream and this layer's delta."""
        c, ops = self.config, self.ops
        hidden, x = ops.add_rms_norm(hidden, delta, self.attn_norm, c.rms_norm_eps)
        qkv = self.qkv_proj(x)
        q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        if self.qkv_bias is not None:
            ops.add_bias_(qkv, self.qkv_bias)
        if self.q_norm is not None:
            ops.head_rms_norm_(qkv, 0, c.num_heads, c.head_dim, self.q_norm, c.rms_norm_eps)
            ops.head_rms_norm_(qkv, q_width, c.num_kv_heads, c.head_dim, self.k_norm, c.rms_norm_eps)
        # q and k heads side by side at the front of each row: one rotation for both, in place.
        cos, sin = rope[self.rope_base]
        ops.rope_(qkv, c.num_heads + c.num_kv_heads, c.head_dim, cos, sin)
        q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
        k, v = k.view(-1, c.num_kv_heads, c.head_dim), v.view(-1, c.num_kv_heads, c.head_dim)
        ops.write_kv(k, v, cache, meta.slot_mapping)
        attn = paged_attention(q.view(-1, c.num_heads, c.head_dim), k, v, cache, meta, c.scale, self.window)
        out = self.o_proj(attn)
        if self.post_attn_norm is not None:
            out = ops.rms_norm(out, self.post_attn_norm, c.rms_norm_eps)
        hidden, x = ops.add_rms_norm(hidden, out, self.mlp_norm, c.rms_norm_eps)
        gate_up = self.gate_up_proj(x)
        act = ops.gelu_mul(gate_up) if c.arch.activation == "gelu_tanh" else ops.silu_mul(gate_up)
        out = self.down_proj(act)
        if self.post_mlp_norm is not None:
            out = ops.rms_norm(out, self.post_mlp_norm, c.rms_norm_eps)
        return hidden, out


class DecoderModel(torch.nn.Module):
    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], weight_format: str = "float32") -> None:
        super().__init__()
        self.config = config
        embeddings = weights.pop("model.embed_tokens.weight")
        self.norm = weights.pop("model.norm.weight")
        self.device = self.norm.device
        self.ops = LayerOps(self.device)
        self.layers = torch.nn.ModuleList(DecoderLayer(config, weights, i, weight_format, self.ops)
                                          for i in range(config.num_layers))
        tied = "lm_head.weight" not in weights
        self.lm_head = Linear(weights.pop("lm_head.weight", embeddings), weight_format)
        freq_factors = weights.pop("rope_freq_factors.weight", None)
        if weights:
            raise ModelLoadError(f"the {config.architecture} model has tensors rillet does not read: "
                                 f"{', '.join(sorted(weights)[:5])}")
        # The format as held: names the block types that had no native kernel (system_fingerprint shows it).
        self.weight_format = describe_weights([self.lm_head] + [linear for layer in self.layers for linear in (
            layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)], weight_format)
        # Rows are looked up, not multiplied: quantized rows are dequantized as they are looked up;
        # float rows are held in the weight format's precision.
        self.embed_tokens = embeddings if isinstance(embeddings, QuantizedWeight) else embeddings.to(
            torch.float32 if weight_format == "float32" else torch.float16)
        # A tied head holding the embedding's own blocks serves the lookups too: one copy, not two.
        self.embed_from_head = tied and isinstance(embeddings, QuantizedWeight) and self.lm_head.serves_rows
        if self.embed_from_head:
            self.embed_tokens = None
        self.embed_scale = math.sqrt(config.hidden_size) if config.arch.scale_embeddings else None
        # Each RoPE base's frequencies; a step's cos and sin are computed for its own positions
        # (a table of every position would hold 64 MiB per base at a 32k context).
        self.rope_frequencies = {base: rope_frequencies(config, self.device, freq_factors, base)
                                 for base in {config.rope_base(i) for i in range(config.num_layers)}}
        # All layers in one native call where every kernel is native (the quantized formats on the CPU).
        self.native_layers = NativeDecoder.build(self) if self.device.type == "cpu" else None

    def allocate_kv_cache(self, num_blocks: int, block_size: int, dtype: torch.dtype,
                          count: int | None = None) -> list[torch.Tensor]:
        """count tensors (default: one per layer) of [2, num_blocks, block_size, kv_heads, head_dim]."""
        c = self.config
        shape = (2, num_blocks, block_size, c.num_kv_heads, c.head_dim)
        return [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(count or c.num_layers)]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        if self.embed_from_head:
            hidden = self.lm_head.rows(input_ids.cpu()).to(self.device)
        elif isinstance(self.embed_tokens, QuantizedWeight):
            hidden = self.embed_tokens.rows(input_ids)
        else:
            hidden = self.embed_tokens[input_ids].float()
        if self.embed_scale is not None:
            hidden *= self.embed_scale
        rope = {base: rope_angles(positions, frequencies, self.config) for base, frequencies in self.rope_frequencies.items()}
        if self.native_layers is not None and self.native_layers.supports(kv_caches):
            return self.native_layers(hidden, rope, kv_caches, meta)
        delta = None
        for index, (layer, cache) in enumerate(zip(self.layers, kv_caches)):
            hidden, delta = layer(hidden, delta, rope, cache, meta.for_layer(index))
        return self.ops.add_rms_norm(hidden, delta, self.norm, self.config.rms_norm_eps)[1]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


def rope_frequencies(config: ModelConfig, device: torch.device, freq_factors: torch.Tensor | None = None,
                     base: float | None = None) -> torch.Tensor:
    """The rotation frequencies at a RoPE base, [head_dim / 2] float64. freq_factors (Llama 3.1
    style files) divide them one by one; a Hugging Face config's llama3 scaling gives the same factors."""
    half = torch.arange(0, config.head_dim, 2, dtype=torch.float64, device=device) / config.head_dim
    inv_freq = 1.0 / ((config.rope_theta if base is None else base) ** half)
    if freq_factors is None and config.rope_llama3 is not None:
        freq_factors = llama3_freq_factors(inv_freq, *config.rope_llama3)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(device, torch.float64)
    return inv_freq


def rope_angles(positions: torch.Tensor, frequencies: torch.Tensor,
                config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles of each position, [len(positions), head_dim] float32
    (computed in float64, so every position gets the same values however it is batched). On the
    CPU through NumPy: a decode step's handful of positions took a fifth of the time of PyTorch's
    six small ops."""
    if positions.device.type == "cpu" and frequencies.device.type == "cpu":
        angles = np.outer(positions.numpy() / config.rope_scaling_factor, frequencies.numpy())
        angles = np.concatenate([angles, angles], axis=-1)
        return torch.from_numpy(np.cos(angles).astype(np.float32)), torch.from_numpy(np.sin(angles).astype(np.float32))
    angles = torch.outer(positions.to(torch.float64) / config.rope_scaling_factor, frequencies)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def llama3_freq_factors(inv_freq: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                        original_context: int) -> torch.Tensor:
    """Llama 3.1's RoPE scaling as factors dividing each frequency: long wavelengths slowed by
    `factor`, short ones kept, those between blended (as llama.cpp writes it into rope_freqs)."""
    wavelength = 2 * math.pi / inv_freq
    low_wavelength, high_wavelength = original_context / low_freq_factor, original_context / high_freq_factor
    smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    return torch.where(wavelength < high_wavelength, torch.ones_like(inv_freq),
                       torch.where(wavelength > low_wavelength, torch.full_like(inv_freq, factor), blended))
