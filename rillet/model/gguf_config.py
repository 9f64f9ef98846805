"""A model's config from a GGUF file's metadata (no weights read, no torch)."""
from __future__ import annotations

from typing import Any

from rillet.model.architecture import SUPPORTED_ARCHITECTURES
from rillet.model.config import ModelConfig
from rillet.model.errors import ModelLoadError
from rillet.model.gguf_file import GGUFFile

# Gemma 3's local layers: every layer but each sixth, with their own RoPE base (llama.cpp's defaults
# for files that do not say).
GEMMA3_SLIDING_WINDOW_PATTERN = 6
GEMMA3_LOCAL_ROPE_THETA = 10000.0


def read_config(file: GGUFFile) -> ModelConfig:
    arch = file.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"unsupported model architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

    def required(name: str) -> Any:
        value = file.get(f"{arch}.{name}")
        if value is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{name}")
        return value

    hidden = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_layers = int(required("block_count"))
    scaling = file.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ModelLoadError(f"unsupported rope scaling {scaling!r} (supported: none, linear)")
    rope_theta = float(file.get(f"{arch}.rope.freq_base", 10000.0))
    windows, thetas = (), ()
    window = file.get(f"{arch}.attention.sliding_window")
    if arch == "gemma3" and window:
        # A layer count (every nth layer global) or, in newer files, a flag per layer.
        pattern = file.get(f"{arch}.attention.sliding_window_pattern", GEMMA3_SLIDING_WINDOW_PATTERN)
        local = ([bool(flag) for flag in pattern] if isinstance(pattern, list)
                 else [(i + 1) % int(pattern) != 0 for i in range(num_layers)])
        windows = tuple(int(window) if is_local else None for is_local in local)
        local_theta = float(file.get(f"{arch}.rope.freq_base_swa", GEMMA3_LOCAL_ROPE_THETA))
        thetas = tuple(local_theta if is_local else rope_theta for is_local in local)
    elif window:
        windows = (int(window),) * num_layers
    return ModelConfig(
        architecture=arch,
        vocab_size=int(file.get(f"{arch}.vocab_size") or len(file.get("tokenizer.ggml.tokens", []))),
        hidden_size=hidden,
        intermediate_size=int(required("feed_forward_length")),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(file.get(f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(file.get(f"{arch}.attention.key_length", hidden // num_heads)),
        rope_theta=rope_theta,
        rms_norm_eps=float(file.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        max_context_len=int(required("context_length")),
        tie_word_embeddings=not any(t.name == "output.weight" for t in file.tensors),
        rope_scaling_factor=float(file.get(f"{arch}.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0,
        layer_windows=windows,
        layer_rope_thetas=thetas,
        # Files that do not say use head_dim ** -0.5, as llama.cpp does (Gemma 3 27B's files need it said).
        attention_scale=None if file.get(f"{arch}.attention.scale") is None else float(file.get(f"{arch}.attention.scale")),
    )
