"""Tiny random models of each family, for serving with the family's real chat template
(tests/model/chat_templates/): the family's architecture with random weights, the default model's
byte-level vocabulary with the family's special tokens added (as control tokens, as llama.cpp's
converter writes them; Qwen's <tool_call> as a user-defined one), and the template itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from rillet.model.gguf_file import open_gguf
from rillet.model.loader import default_model_path

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "model" / "chat_templates"
_CONTROL, _USER_DEFINED = 3, 4
_LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
                  "<|python_tag|>")
_MISTRAL_V3_TOKENS = ("<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]",
                      "[TOOL_RESULTS]", "[/TOOL_RESULTS]")
_MISTRAL_V11_TOKENS = _MISTRAL_V3_TOKENS + ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[ARGS]", "[CALL_ID]",
                                            "[TOOL_CONTENT]", "[IMG]")


@dataclass(frozen=True)
class Family:
    template: str  # the file in tests/model/chat_templates/, less .jinja
    architecture: str
    bos: str
    eos: str
    # The call format rillet must choose (rillet/api/call_formats.py), and whether from the template.
    call_format: str
    in_template: bool
    control_tokens: tuple[str, ...] = ()
    user_defined_tokens: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


FAMILIES = {
    "smollm2": Family("HuggingFaceTB-SmolLM2-135M-Instruct", "llama", "<|im_start|>", "<|im_end|>", "hermes", False),
    "qwen2.5": Family("Qwen-Qwen2.5-7B-Instruct", "qwen2", "<|endoftext|>", "<|im_end|>", "hermes", True,
                      user_defined_tokens=("<tool_call>", "</tool_call>")),
    "qwen3": Family("Qwen-Qwen3-0.6B", "qwen3", "<|endoftext|>", "<|im_end|>", "hermes", True,
                    user_defined_tokens=("<tool_call>", "</tool_call>", "<think>", "</think>")),
    "llama3.1": Family("meta-llama-Llama-3.1-8B-Instruct", "llama", "<|begin_of_text|>", "<|eot_id|>", "llama3_json",
                       True, _LLAMA3_TOKENS),
    "llama3.2": Family("meta-llama-Llama-3.2-3B-Instruct", "llama", "<|begin_of_text|>", "<|eot_id|>", "llama3_json",
                       True, _LLAMA3_TOKENS),
    "mistral-nemo": Family("mistralai-Mistral-Nemo-Instruct-2407", "mistral", "<s>", "</s>", "mistral", True,
                           _MISTRAL_V3_TOKENS),
    "mistral-small-3.2": Family("Mistral-Small-3.2-24B-Instruct-2506", "mistral", "<s>", "</s>", "mistral_v11", True,
                                _MISTRAL_V11_TOKENS),
    "gemma3": Family("google-gemma-3-it", "gemma3", "<bos>", "<eos>", "hermes", False,
                     ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")),
}

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 4, 2, 16, 128


def template_source(family: Family) -> str:
    return (TEMPLATES_DIR / f"{family.template}.jinja").read_text(encoding="utf-8")


def write_family_model(path: Path, name: str, context_length: int = 4096) -> Path:
    """A GGUF file of one layer of the family's architecture, random weights, its vocabulary and template."""
    family = FAMILIES[name]
    base = open_gguf(default_model_path())
    tokens = list(base.get("tokenizer.ggml.tokens"))
    types = list(base.get("tokenizer.ggml.token_type"))
    for extra, kind in [(t, _CONTROL) for t in family.control_tokens] + \
                       [(t, _USER_DEFINED) for t in family.user_defined_tokens]:
        if extra not in tokens:
            tokens.append(extra)
            types.append(kind)
    arch = family.architecture
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(context_length)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(base.get("tokenizer.ggml.pre"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(base.get("tokenizer.ggml.merges"))
    writer.add_bos_token_id(tokens.index(family.bos))
    writer.add_eos_token_id(tokens.index(family.eos))
    writer.add_add_bos_token(False)
    writer.add_chat_template(template_source(family))
    for tensor_name, values in _random_tensors(arch, len(tokens)).items():
        writer.add_tensor(tensor_name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _random_tensors(arch: str, vocab_size: int) -> dict[str, np.ndarray]:
    shapes = {"token_embd.weight": (vocab_size, HIDDEN), "output_norm.weight": (HIDDEN,),
              "blk.0.attn_norm.weight": (HIDDEN,), "blk.0.ffn_norm.weight": (HIDDEN,),
              "blk.0.attn_q.weight": (HEADS * HEAD_DIM, HIDDEN), "blk.0.attn_k.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
              "blk.0.attn_v.weight": (KV_HEADS * HEAD_DIM, HIDDEN), "blk.0.attn_output.weight": (HIDDEN, HEADS * HEAD_DIM),
              "blk.0.ffn_gate.weight": (FFN, HIDDEN), "blk.0.ffn_up.weight": (FFN, HIDDEN),
              "blk.0.ffn_down.weight": (HIDDEN, FFN)}
    if arch == "qwen2":
        shapes.update({"blk.0.attn_q.bias": (HEADS * HEAD_DIM,), "blk.0.attn_k.bias": (KV_HEADS * HEAD_DIM,),
                       "blk.0.attn_v.bias": (KV_HEADS * HEAD_DIM,)})
    if arch in ("qwen3", "gemma3"):
        shapes.update({"blk.0.attn_q_norm.weight": (HEAD_DIM,), "blk.0.attn_k_norm.weight": (HEAD_DIM,)})
    if arch == "gemma3":
        shapes.update({"blk.0.post_attention_norm.weight": (HIDDEN,), "blk.0.post_ffw_norm.weight": (HIDDEN,)})
    rng = np.random.default_rng(0)
    return {name: (rng.standard_normal(shape) * (1.0 if len(shape) == 1 else 0.2)).astype(np.float32)
            for name, shape in shapes.items()}
