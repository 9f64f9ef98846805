"""The Llama-family forward (RMSNorm, RoPE, grouped-query attention, SwiGLU) over a flat
batch of tokens from many sequences, with keys and values in a paged cache."""
from __future__ import annotations

import torch

from rillet.model.attention import paged_attention
from rillet.model.attention_metadata import AttentionMetadata
from rillet.model.config import ModelConfig
from rillet.model.layer_ops import LayerOps
from rillet.model.linear import Linear, describe_weights
from rillet.model.native.decoder_layers import NativeDecoder
from rillet.model.quantized import QuantizedWeight, concat_rows


class LlamaLayer(torch.nn.Module):
    """Takes its matrices out of weights as it packs them, so loading never holds two copies."""

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], prefix: str, weight_format: str,
                 ops: LayerOps) -> None:
        super().__init__()
        self.config = config
        self.ops = ops
        self.attn_norm = weights[f"{prefix}.input_layernorm.weight"]
        self.mlp_norm = weights[f"{prefix}.post_attention_layernorm.weight"]
        # One matmul for q, k and v, and one for gate and up.
        self.qkv_proj = Linear(concat_rows([weights.pop(f"{prefix}.self_attn.{p}_proj.weight") for p in "qkv"]),
                               weight_format)
        self.o_proj = Linear(weights.pop(f"{prefix}.self_attn.o_proj.weight"), weight_format)
        self.gate_up_proj = Linear(concat_rows([weights.pop(f"{prefix}.mlp.gate_proj.weight"),
                                                weights.pop(f"{prefix}.mlp.up_proj.weight")]), weight_format)
        self.down_proj = Linear(weights.pop(f"{prefix}.mlp.down_proj.weight"), weight_format)

    def forward(self, hidden: torch.Tensor, delta: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                cache: torch.Tensor, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden + delta is the residual stream entering the layer (the previous layer's output is
        added here, with the norm, in one pass); returns the stream and this layer's delta."""
        c, ops = self.config, self.ops
        hidden, x = ops.add_rms_norm(hidden, delta, self.attn_norm, c.rms_norm_eps)
        qkv = self.qkv_proj(x)
        # q and k heads side by side at the front of each row: one rotation for both, in place.
        ops.rope_(qkv, c.num_heads + c.num_kv_heads, c.head_dim, cos, sin)
        q, k, v = qkv.split([c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim],
                            dim=-1)
        k, v = k.view(-1, c.num_kv_heads, c.head_dim), v.view(-1, c.num_kv_heads, c.head_dim)
        ops.write_kv(k, v, cache, meta.slot_mapping)
        attn = paged_attention(q.view(-1, c.num_heads, c.head_dim), k, v, cache, meta)
        hidden, x = ops.add_rms_norm(hidden, self.o_proj(attn), self.mlp_norm, c.rms_norm_eps)
        return hidden, self.down_proj(ops.silu_mul(self.gate_up_proj(x)))


class LlamaModel(torch.nn.Module):
    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], weight_format: str = "float32") -> None:
        super().__init__()
        self.config = config
        embeddings = weights["model.embed_tokens.weight"]
        self.norm = weights["model.norm.weight"]
        self.device = self.norm.device
        self.ops = LayerOps(self.device)
        self.layers = torch.nn.ModuleList(LlamaLayer(config, weights, f"model.layers.{i}", weight_format, self.ops)
                                          for i in range(config.num_layers))
        self.lm_head = Linear(weights.get("lm_head.weight", embeddings), weight_format)
        # The format as held: names the block types that had no native kernel (system_fingerprint shows it).
        self.weight_format = describe_weights([self.lm_head] + [linear for layer in self.layers for linear in (
            layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)], weight_format)
        # Rows are looked up, not multiplied: quantized rows are dequantized as they are looked up;
        # float rows are held in the weight format's precision.
        self.embed_tokens = embeddings if isinstance(embeddings, QuantizedWeight) else embeddings.to(
            torch.float32 if weight_format == "float32" else torch.float16)
        self.rope_cos, self.rope_sin = rope_tables(config, self.device,
                                                   weights.get("rope_freq_factors.weight"))
        # All layers in one native call where every kernel is native (the quantized formats on the CPU).
        self.native_layers = NativeDecoder.build(self) if self.device.type == "cpu" else None

    def allocate_kv_cache(self, num_blocks: int, block_size: int, dtype: torch.dtype) -> list[torch.Tensor]:
        c = self.config
        shape = (2, num_blocks, block_size, c.num_kv_heads, c.head_dim)
        return [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(c.num_layers)]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        if isinstance(self.embed_tokens, QuantizedWeight):
            hidden = self.embed_tokens.rows(input_ids)
        else:
            hidden = self.embed_tokens[input_ids].float()
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        if self.native_layers is not None and self.native_layers.supports(kv_caches):
            return self.native_layers(hidden, cos, sin, kv_caches, meta)
        delta = None
        for layer, cache in zip(self.layers, kv_caches):
            hidden, delta = layer(hidden, delta, cos, sin, cache, meta)
        return self.ops.add_rms_norm(hidden, delta, self.norm, self.config.rms_norm_eps)[1]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


def rope_tables(config: ModelConfig, device: torch.device,
                freq_factors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's rotation angles, [max_context_len, head_dim] float32.
    freq_factors (Llama 3.1 style files) divide the frequencies one by one."""
    half = torch.arange(0, config.head_dim, 2, dtype=torch.float64, device=device) / config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** half)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(device, torch.float64)
    positions = torch.arange(config.max_context_len, dtype=torch.float64, device=device) / config.rope_scaling_factor
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()
