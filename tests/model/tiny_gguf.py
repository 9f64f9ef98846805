"""Writes small GGUF files for tests: llama metadata, chosen tensors, optionally a vocabulary."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
SPACE = "\u2581"
SPM_PIECES = [SPACE, "h", "e", "l", "o", "w", "r", "d", f"{SPACE}h", "el", "ll", "lo", "he", "hel", "hell",
              "hello", f"{SPACE}hello", f"{SPACE}w", "or", "ld", "orld", f"{SPACE}world", f"{SPACE}wor", "wor", ",", "!"]
SPM_VOCAB_SIZE = 3 + 256 + len(SPM_PIECES) + 1  # unk, bos, eos, bytes, pieces, one user-defined token


def write_gguf(path: Path, arch: str = "llama", tensors: dict[str, tuple[np.ndarray, Q]] | None = None,
               tokenizer: str | None = None, context_length: int = 64) -> Path:
    """Each tensor is stored quantized to its type. tokenizer="llama" adds a SentencePiece vocabulary."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(context_length)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    if tokenizer == "llama":
        _add_sentencepiece_vocab(writer)
    else:
        writer.add_token_list(["<s>", "a", "b", "ab", "日本"])
    writer.add_array("test.floats", [0.5, 1.5])
    for name, (values, qtype) in (tensors or {}).items():
        writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_sentencepiece_vocab(writer: gguf.GGUFWriter) -> None:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *SPM_PIECES, "<|user|>"]
    types = [2, 3, 3, *[6] * 256, *[1] * len(SPM_PIECES), 4]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))] + [0.0])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)


def tiny_llama_tensors(vocab_size: int) -> dict[str, tuple[np.ndarray, Q]]:
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab_size, 8), "output_norm.weight": (8,), "blk.0.attn_norm.weight": (8,),
              "blk.0.ffn_norm.weight": (8,), "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (4, 8),
              "blk.0.attn_v.weight": (4, 8), "blk.0.attn_output.weight": (8, 8), "blk.0.ffn_gate.weight": (16, 8),
              "blk.0.ffn_up.weight": (16, 8), "blk.0.ffn_down.weight": (8, 16)}
    return {name: (rng.standard_normal(shape).astype(np.float32), Q.F32) for name, shape in shapes.items()}
