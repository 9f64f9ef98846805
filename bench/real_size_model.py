"""Writes a model of real size to measure speed on: random weights in a real model's shape (default
SmolLM2-1.7B's: 24 layers, 2048 wide, 32 heads, 8192 in the MLP, tied embeddings), float16, with the
default model's tokenizer and chat template, as a GGUF file. Speed does not depend on the weights'
values; the text it writes is noise.

    python bench/real_size_model.py /tmp/smollm2-1.7b-f16.gguf
    bash ../shared/peers/llama-server.sh quantize /tmp/smollm2-1.7b-f16.gguf /tmp/smollm2-1.7b-q4_k_m.gguf Q4_K_M

Quantize it with llama.cpp's own llama-quantize (above), so that rillet and llama-server read the same
blocks people download. Prints one JSON line: the shape, the parameters and the file's size.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np

from rillet.model import default_model_path

SHAPES = {  # hidden, layers, heads, kv heads, intermediate
    "smollm2-1.7b": (2048, 24, 32, 32, 8192),
    "llama-3.2-3b": (3072, 28, 24, 8, 8192),  # its shape, with SmolLM2's vocabulary
}


def copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> int:
    """The source file's tokenizer.* fields (vocabulary, merges, special ids, chat template); the vocabulary's size."""
    reader = gguf.GGUFReader(source)
    vocabulary = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            values = [field.parts[i] for i in field.data]
            if field.types[1] == gguf.GGUFValueType.STRING:
                values = [bytes(v).decode("utf-8", "surrogateescape") for v in values]
            else:
                values = [v.tolist()[0] for v in values]
            writer.add_array(name, values)
            if name == "tokenizer.ggml.tokens":
                vocabulary = len(values)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[field.data[0]]).decode())
        else:
            writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], kind)
    return vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--shape", choices=SHAPES, default="smollm2-1.7b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hidden, layers, heads, kv_heads, intermediate = SHAPES[args.shape]
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(args.output, "llama")
    writer.add_name(f"random {args.shape}")
    vocabulary = copy_tokenizer(writer, default_model_path())
    writer.add_context_length(8192)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(130000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(vocabulary)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(args.seed)
    parameters = 0

    def matrix(name: str, rows: int, cols: int) -> None:
        nonlocal parameters
        weights = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
        writer.add_tensor(name, weights)
        parameters += weights.size

    matrix("token_embd.weight", vocabulary, hidden)  # tied: the output head too
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        matrix(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        matrix(f"blk.{i}.ffn_gate.weight", intermediate, hidden)
        matrix(f"blk.{i}.ffn_up.weight", intermediate, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, intermediate)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(json.dumps({"file": str(args.output), "shape": args.shape, "parameters": parameters,
                      "bytes": args.output.stat().st_size}))


if __name__ == "__main__":
    main()
