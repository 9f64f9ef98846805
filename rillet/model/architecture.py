"""The decoder architectures rillet runs, each a small description of how it differs from Llama's.

One decoder (rillet/model/decoder.py) is written once; an Architecture says which of its switches a
model family turns on, what its tensors are called (in Hugging Face folders and in GGUF files), and
the turn format of a file that carries no chat template.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The turn formats of files without a chat template (base models): each family's own.
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                   " + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
# Gemma's turns as Gemma 3's instruction-tuned template writes them: a system message opens the first
# user turn, an assistant speaks as "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages and messages[0]['role'] in ('system', 'developer') %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

# GGUF layer tensor names (after "blk.N.") as Hugging Face names (after "model.layers.N."), shared
# by every family; each family adds or overrides its own.
_GGUF_LAYER_NAMES = {
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
_QK_NORM_NAMES = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str
    # Hugging Face model_type values of the family.
    hf_model_types: tuple[str, ...]
    # Biases on the q, k and v projections (Qwen2).
    qkv_bias: bool = False
    # RMSNorm of each query and key head, before the rotation (Qwen3, Gemma 3).
    qk_norm: bool = False
    # Norms of the attention's and the MLP's outputs before they join the residual (Gemma 3).
    sandwich_norms: bool = False
    # The MLP's gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU).
    activation: str = "silu"
    # Embeddings multiplied by sqrt(hidden_size) (Gemma).
    scale_embeddings: bool = False
    # Hugging Face norms that multiply by (1 + weight); GGUF files store weight + 1 already (Gemma).
    hf_norm_offset: float = 0.0
    # llama.cpp's converter interleaves the rotary halves of q and k rows (Llama, Mistral).
    gguf_interleaved_rope: bool = False
    # Hugging Face name of the norm before the MLP.
    mlp_norm_name: str = "post_attention_layernorm"
    gguf_layer_names: dict[str, str] = field(default_factory=lambda: dict(_GGUF_LAYER_NAMES))
    # The turn format of a file with no chat template.
    default_template: str = CHATML_TEMPLATE
    default_template_name: str = "ChatML"

    def layer_tensor_names(self) -> list[str]:
        """The Hugging Face names (after "model.layers.N.") of every tensor of a layer."""
        names = ["input_layernorm.weight", f"{self.mlp_norm_name}.weight",
                 *(f"self_attn.{p}_proj.weight" for p in "qkvo"), *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down"))]
        if self.qkv_bias:
            names += [f"self_attn.{p}_proj.bias" for p in "qkv"]
        if self.qk_norm:
            names += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
        if self.sandwich_norms:
            names += ["post_attention_layernorm.weight", "post_feedforward_layernorm.weight"]
        return names


ARCHITECTURES = {a.name: a for a in (
    Architecture("llama", ("llama",), gguf_interleaved_rope=True, default_template_name="ChatML"),
    Architecture("mistral", ("mistral",), gguf_interleaved_rope=True),
    Architecture("qwen2", ("qwen2",), qkv_bias=True),
    Architecture("qwen3", ("qwen3",), qk_norm=True, gguf_layer_names={**_GGUF_LAYER_NAMES, **_QK_NORM_NAMES}),
    Architecture("gemma3", ("gemma3_text",), qk_norm=True, sandwich_norms=True, activation="gelu_tanh",
                 scale_embeddings=True, hf_norm_offset=1.0, mlp_norm_name="pre_feedforward_layernorm",
                 gguf_layer_names={**_GGUF_LAYER_NAMES, **_QK_NORM_NAMES, "ffn_norm": "pre_feedforward_layernorm",
                                   "post_attention_norm": "post_attention_layernorm",
                                   "post_ffw_norm": "post_feedforward_layernorm"},
                 default_template=GEMMA_TEMPLATE, default_template_name="Gemma's <start_of_turn> turns"),
)}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


def architecture_of_model_type(model_type: str | None) -> Architecture | None:
    return next((a for a in ARCHITECTURES.values() if model_type in a.hf_model_types), None)
