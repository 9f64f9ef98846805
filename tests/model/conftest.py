from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rillet.model import default_model_path, load_model


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return Path(default_model_path())


@pytest.fixture(scope="session")
def ours(gguf_path):
    """Exact float32 weights: the parity tests compare against transformers in float32."""
    return load_model(str(gguf_path), weight_format="float32")


@pytest.fixture(scope="session")
def reference_tokenizer(gguf_path, ours, request):
    """transformers' own conversion of the file's tokenizer, kept in pytest's cache between runs
    (converting it from the GGUF takes ~10 s)."""
    transformers = pytest.importorskip("transformers")
    key = f"rillet-reference-tokenizer-{ours.file_fingerprint[:16]}-{transformers.__version__}"
    cached = Path(request.config.cache.mkdir(key))
    if (cached / "tokenizer.json").is_file():
        return transformers.AutoTokenizer.from_pretrained(cached)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(cached)
    return tokenizer


@pytest.fixture(scope="session")
def reference_model(gguf_path):
    """The same GGUF, dequantized and run by Hugging Face transformers: an independent implementation."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def ours_float16(gguf_path):
    return load_model(str(gguf_path), weight_format="float16")


@pytest.fixture(scope="session")
def ours_quantized(gguf_path):
    """The file's Q4_1/Q8_0 blocks through the exact native kernel (activations in float32)."""
    return load_model(str(gguf_path), weight_format="quantized")


@pytest.fixture(scope="session")
def ours_int8(gguf_path):
    """The file's blocks times activations rounded to int8 per block of 32, as llama.cpp does."""
    return load_model(str(gguf_path), weight_format="quantized-int8")
