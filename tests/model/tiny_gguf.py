"""Writes small GGUF files for tests: llama metadata, chosen tensors, optionally a vocabulary; and
blocks of the quantized types, packed by hand from chosen integers or random with sane scales."""
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


# Blocks of the types llama.cpp's files ship, packed here by hand from chosen integers, scales and
# offsets, with the values each must stand for computed from those choices (not from the bytes).


def _fp16(value: float) -> bytes:
    return np.float16(value).tobytes()


def _k_scales(sc: np.ndarray, m: np.ndarray) -> bytes:
    """The 12 bytes of eight 6-bit scales and mins of Q4_K and Q5_K."""
    packed = np.zeros(12, np.uint8)
    for j in range(4):
        packed[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6)
        packed[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6)
        packed[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4)
    return packed.tobytes()


def _q4_k(rng) -> tuple[bytes, np.ndarray]:
    q, sc, m = rng.integers(0, 16, 256), rng.integers(0, 64, 8), rng.integers(0, 64, 8)
    d, dmin = 0.5, 0.25
    qs = np.zeros(128, np.uint8)
    for c in range(4):
        qs[32 * c:32 * c + 32] = q[64 * c:64 * c + 32] | (q[64 * c + 32:64 * c + 64] << 4)
    values = d * np.repeat(sc, 32) * q - dmin * np.repeat(m, 32)
    return _fp16(d) + _fp16(dmin) + _k_scales(sc, m) + qs.tobytes(), values


def _q5_k(rng) -> tuple[bytes, np.ndarray]:
    q, sc, m = rng.integers(0, 32, 256), rng.integers(0, 64, 8), rng.integers(0, 64, 8)
    d, dmin = 0.5, 0.25
    qs, qh = np.zeros(128, np.uint8), np.zeros(32, np.uint8)
    for c in range(4):
        low, high = q[64 * c:64 * c + 32], q[64 * c + 32:64 * c + 64]
        qs[32 * c:32 * c + 32] = (low & 15) | ((high & 15) << 4)
        qh |= ((low >> 4) << (2 * c)).astype(np.uint8) | ((high >> 4) << (2 * c + 1)).astype(np.uint8)
    values = d * np.repeat(sc, 32) * q - dmin * np.repeat(m, 32)
    return _fp16(d) + _fp16(dmin) + _k_scales(sc, m) + qh.tobytes() + qs.tobytes(), values


def _q6_k(rng) -> tuple[bytes, np.ndarray]:
    q, sc = rng.integers(0, 64, 256), rng.integers(-128, 128, 16)
    d = 0.5
    ql, qh = np.zeros(128, np.uint8), np.zeros(64, np.uint8)
    for h in range(2):
        part = q[128 * h:128 * h + 128]
        q1, q2, q3, q4 = part[0:32], part[32:64], part[64:96], part[96:128]
        ql[64 * h:64 * h + 32] = (q1 & 15) | ((q3 & 15) << 4)
        ql[64 * h + 32:64 * h + 64] = (q2 & 15) | ((q4 & 15) << 4)
        qh[32 * h:32 * h + 32] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    values = d * np.repeat(sc, 16) * (q - 32)
    return ql.tobytes() + qh.tobytes() + sc.astype(np.int8).tobytes() + _fp16(d), values


def _q5_0(rng) -> tuple[bytes, np.ndarray]:
    q, d = rng.integers(0, 32, 32), 0.5
    qh = sum(int(q[j] >> 4) << j for j in range(32))
    qs = ((q[:16] & 15) | ((q[16:] & 15) << 4)).astype(np.uint8)
    return _fp16(d) + qh.to_bytes(4, "little") + qs.tobytes(), d * (q - 16)


def _q5_1(rng) -> tuple[bytes, np.ndarray]:
    q, d, m = rng.integers(0, 32, 32), 0.5, -3.0
    qh = sum(int(q[j] >> 4) << j for j in range(32))
    qs = ((q[:16] & 15) | ((q[16:] & 15) << 4)).astype(np.uint8)
    return _fp16(d) + _fp16(m) + qh.to_bytes(4, "little") + qs.tobytes(), d * q + m


HAND_PACKED = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k, "Q5_0": _q5_0, "Q5_1": _q5_1}


def hand_packed_rows(ggml_type: str, rows: int, cols: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """rows x cols of hand-packed blocks: (uint8 [rows, bytes per row], the float32 values they stand for)."""
    per_row = cols // gguf.GGML_QUANT_SIZES[Q[ggml_type]][0]
    packed = [[HAND_PACKED[ggml_type](rng) for _ in range(per_row)] for _ in range(rows)]
    raw = np.frombuffer(b"".join(data for row in packed for data, _ in row), np.uint8).reshape(rows, -1).copy()
    return raw, np.array([np.concatenate([values for _, values in row]) for row in packed], np.float32)


# Where each block type keeps its float16 scales, and a scale that keeps random blocks' weights within
# about +-4: random bytes elsewhere exercise every integer and sub-block scale the type can hold.
_FLOAT16_FIELDS = {"Q5_0": ([0], 0.1), "Q5_1": ([0, 2], 0.1), "Q4_K": ([0, 2], 0.003), "Q5_K": ([0, 2], 0.002),
                   "Q6_K": ([208], 0.0008), "Q2_K": ([80, 82], 0.02), "Q3_K": ([108], 0.004)}


def random_blocks(ggml_type: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """uint8 [rows, bytes per row] of random blocks with sane float16 scales, for types gguf cannot
    quantize (the K types) or quantizes only approximately by hand."""
    rng = np.random.default_rng(seed)
    values, size = gguf.GGML_QUANT_SIZES[Q[ggml_type]]
    blocks = rng.integers(0, 256, (rows, cols // values, size), dtype=np.uint8)
    offsets, scale = _FLOAT16_FIELDS[ggml_type]
    for offset in offsets:
        halves = (rng.standard_normal(blocks.shape[:2]) * scale).astype(np.float16)
        blocks[..., offset:offset + 2] = halves[..., None].view(np.uint8)
    return blocks.reshape(rows, -1)


def write_raw_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Q]], hidden: int, intermediate: int,
                   heads: int, kv_heads: int, layers: int, vocab_size: int) -> Path:
    """A llama file without a vocabulary whose tensors are given as stored: float32 arrays (Q.F32) or
    uint8 rows of blocks of their type, for model tests on block types gguf cannot quantize."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_vocab_size(vocab_size)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=None if qtype == Q.F32 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_model_gguf(path: Path, model, arch, qtype: Q = Q.F32) -> Path:
    """A Hugging Face model (transformers, float32) as llama.cpp's converter writes it for its family:
    its names, q/k rows interleaved for Llama and Mistral, Gemma's norms stored as 1 + weight, Llama
    3.1 scaling as rope_freqs; the matrices in qtype, with the SentencePiece vocabulary above."""
    import torch

    from rillet.model.decoder import llama3_freq_factors
    from rillet.model.loader import hf_config

    config = hf_config(model.config.to_dict() | {"model_type": model.config.model_type}, path)
    writer = gguf.GGUFWriter(path, arch.name)
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_context_len)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if config.layer_windows:
        writer.add_sliding_window(next(w for w in config.layer_windows if w))
        writer.add_sliding_window_pattern([w is not None for w in config.layer_windows])
    if config.layer_rope_thetas:
        writer.add_rope_freq_base_swa(next(t for t, w in zip(config.layer_rope_thetas, config.layer_windows) if w))
    _add_sentencepiece_vocab(writer)
    gguf_names = {hf: gguf_name for gguf_name, hf in arch.gguf_layer_names.items()}
    for name, tensor in model.state_dict().items():
        values = tensor.float().numpy()
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            part, _, kind = rest.rpartition(".")
            target = f"blk.{layer}.{gguf_names[part]}.{kind}"
        else:
            target = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                      "lm_head.weight": "output.weight"}[name]
        if arch.gguf_interleaved_rope and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_heads if "q_proj" in name else config.num_kv_heads
            values = values.reshape(heads, 2, -1, values.shape[-1]).swapaxes(1, 2).reshape(values.shape)
        if arch.hf_norm_offset and name.endswith("norm.weight"):
            values = values + arch.hf_norm_offset
        kind = qtype if values.ndim == 2 and values.shape[1] % 32 == 0 else Q.F32
        writer.add_tensor(target, gguf.quants.quantize(values, kind), raw_dtype=kind)
    if config.rope_llama3 is not None:
        half = torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim
        inv_freq = 1.0 / config.rope_theta ** half
        writer.add_tensor("rope_freqs.weight", llama3_freq_factors(inv_freq, *config.rope_llama3).float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

